"""Optional: enrich a concept set with concepts proposed by a language model the user configures.

The concept-aware paper enriches its knowledge-based concept pool with GPT-4 before a manual review
(its step 2). Here that step is a hook, off by default and never needed: `enrich_concepts` takes any
`complete(prompt) -> text` function; `openai_compatible` builds one for an OpenAI-style chat
completions endpoint (a local server or a hosted API) from a URL, a model name and the name of the
environment variable holding the key. Proposals are filtered (short noun phrases, no duplicates of
the set) and written to a new file for the manual review the paper describes; nothing is sent
anywhere unless the user calls this.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from geoalign.data.concept_sets import Concept, ConceptSet, clean_name, name_key
from geoalign.errors import GeoalignError

PROMPT = """You help build a vocabulary of visual concepts that reveal where in the world a photo was
taken. Category: {category} ({group} geography). Existing concepts in this category: {existing}.
Propose {n} NEW concepts for this category that (1) can be seen in an ordinary photo, (2) are
typical of particular regions, countries or climates, (3) are short noun phrases of one to four
words, in lower case. Answer with a JSON array of strings only."""

_OK = re.compile(r"^[a-z][a-z' -]{1,38}[a-z]$")


def parse_concepts(text: str) -> list[str]:
    """Concept names from a model's answer: a JSON array, or one item per line (bullets allowed)."""
    match = re.search(r"\[.*\]", text, flags=re.S)
    items: list[Any] = []
    if match:
        try:
            items = json.loads(match.group(0))
        except json.JSONDecodeError:
            items = []
    if not items:
        items = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line) for line in text.splitlines()]
    out = []
    for item in items:
        name = clean_name(str(item)).strip(" .,;:\"'").lower()
        if _OK.match(name) and len(name.split()) <= 4:
            out.append(name)
    return out


def enrich_concepts(
    concept_set: ConceptSet,
    complete: Callable[[str], str],
    *,
    per_category: int = 10,
    categories: Sequence[str] | None = None,
    prompt: str = PROMPT,
) -> tuple[ConceptSet, dict[str, list[str]]]:
    """Ask for `per_category` new concepts per category; returns the extended set and what was
    added per category (proposals already in the set, or malformed, are dropped)."""
    by_cat = concept_set.by_category()
    wanted = list(categories) if categories else list(by_cat)
    unknown = [c for c in wanted if c not in by_cat]
    if unknown:
        raise GeoalignError(f"unknown categories {unknown}; the set has {list(by_cat)}")
    seen = {name_key(n) for n in concept_set.names}
    added: dict[str, list[str]] = {}
    extra: list[Concept] = []
    for cat in wanted:
        items = by_cat[cat]
        text = complete(
            prompt.format(
                category=cat,
                group=items[0].group or "general",
                existing=", ".join(c.name for c in items),
                n=per_category,
            )
        )
        new = []
        for name in parse_concepts(text):
            if name_key(name) not in seen and len(new) < per_category:
                seen.add(name_key(name))
                new.append(name)
                extra.append(Concept(name, cat, items[0].group))
        added[cat] = new
    return concept_set.extended(extra, name=f"{concept_set.name}-enriched"), added


def openai_compatible(
    url: str,
    model: str,
    *,
    api_key_env: str | None = "OPENAI_API_KEY",
    timeout: float = 120.0,
    temperature: float = 0.3,
) -> Callable[[str], str]:
    """A `complete` function for an OpenAI-style /chat/completions endpoint (stdlib HTTP only)."""
    import urllib.error
    import urllib.request

    endpoint = url.rstrip("/")
    if not endpoint.endswith("/chat/completions"):
        endpoint += "/chat/completions"
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not key:
        raise GeoalignError(f"the LLM key variable ${api_key_env} is not set (or pass --no-key)")

    def complete(prompt: str) -> str:
        body = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": temperature,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data = json.loads(resp.read().decode())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as err:
            raise GeoalignError(f"LLM request to {endpoint} failed: {err}") from err
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as err:
            raise GeoalignError(f"unexpected answer from {endpoint}: {str(data)[:200]}") from err

    return complete
