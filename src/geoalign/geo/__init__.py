"""Geography: coordinates, distances, metrics, projections, cells, galleries, priors, places."""
