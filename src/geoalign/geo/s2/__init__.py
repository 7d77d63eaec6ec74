"""S2 cells for geocell partitions: vectorised cell ids, partitions, hierarchies, MP-16 files."""
