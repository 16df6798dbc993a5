"""Filtered searches that HNSW answers short are searched again (qdrant/qdrant#3094).

Qdrant's filtered HNSW search only walks through points that pass the filter, so where
those points are poorly linked in the graph it returns fewer hits than asked for although
more points match. Measured with qdrant-edge 0.9.0 on 1,500 points: a filter matching 44 %
of them returned 1 hit of 10 for 30 % of queries in about one build in seventy (the
graph is built with random levels, so a build cannot be repeated), and a filter matching
2 % on a field indexed after the graph was built returned short for every query of every
build. Either backend therefore searches a short filtered result again, first with ACORN
(which also walks through neighbours of neighbours that fail the filter; about twice the
cost of a plain filtered search), then exactly (a scan of the matching points, which the
payload index lists). A result that is short because fewer points match costs the two
retries, which are cheap then: few points match.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import Counter

RetryMode = Literal["acorn", "exact"]
RETRY_MODES: tuple[RetryMode, ...] = ("acorn", "exact")

SHORT_RESULT_RETRIES = Counter(
    "recsys_vector_search_retries_total",
    "Filtered vector searches that came back short and were searched again, by the mode "
    "of the retry (qdrant/qdrant#3094)",
    ["backend", "mode"],
)
