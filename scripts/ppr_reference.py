#!/usr/bin/env python3
"""Reference Personalized PageRank scores from networkx, for the test of `src/graph/ppr.rs`.

Regenerate the committed fixture (deterministic: fixed seeds) from the repository root with

    pip install networkx numpy scipy   # if missing (networkx computes pagerank with scipy)
    python3 scripts/ppr_reference.py

which writes `tests/fixtures/ppr/networkx.json`: a list of cases, each with `name`, `nodes` (ids 0..nodes),
`edges` ([u, v, weight], undirected, no self-loops, no parallel edges), `reset` ([node, weight]), `alpha` and
`expected` (the score of every node, full float precision), from
`networkx.pagerank(G, alpha, personalization, weight="weight", dangling=None, tol=1e-13, max_iter=1000)`.
"""

import json
import random
import struct
from pathlib import Path

import networkx as nx

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ppr" / "networkx.json"


def random_edges(rng, nodes, edges, isolated, weight):
    """`edges` distinct undirected edges over the nodes outside `isolated`, weighted by `weight(rng)`."""
    candidates = [n for n in range(nodes) if n not in isolated]
    seen = set()
    out = []
    while len(out) < edges:
        u, v = rng.sample(candidates, 2)
        key = (min(u, v), max(u, v))
        if key in seen:
            continue
        seen.add(key)
        out.append([u, v, weight(rng)])
    return out


def hippo_weight(rng):
    """HippoRAG-like weights: integer co-occurrence counts for most edges, cosine similarities for synonym edges."""
    if rng.random() < 0.7:
        return float(rng.randint(1, 5))
    # Rounded to a float32 value so that the Rust side (f32 weights) reads exactly the same graph.
    return struct.unpack("f", struct.pack("f", rng.uniform(0.8, 1.0)))[0]


def case(name, rng, nodes, edges, isolated, reset_size, weight, alpha=0.5, reset_isolated=False):
    isolated = set(rng.sample(range(nodes), isolated))
    edge_list = random_edges(rng, nodes, edges, isolated, weight)
    pool = sorted(isolated) if reset_isolated else [n for n in range(nodes) if n not in isolated]
    reset = [[n, float(rng.randint(1, 4))] for n in rng.sample(range(nodes), reset_size - 1)]
    reset.append([rng.choice(pool), 2.5])
    g = nx.Graph()
    g.add_nodes_from(range(nodes))
    g.add_weighted_edges_from(edge_list)
    personalization = {}
    for n, w in reset:
        personalization[n] = personalization.get(n, 0.0) + w
    scores = nx.pagerank(
        g, alpha=alpha, personalization=personalization, weight="weight", dangling=None, tol=1e-13, max_iter=1000
    )
    return {
        "name": name,
        "nodes": nodes,
        "edges": edge_list,
        "reset": reset,
        "alpha": alpha,
        "expected": [scores[n] for n in range(nodes)],
    }


def main():
    rng = random.Random(20240607)
    unit = lambda r: 1.0  # noqa: E731
    small_int = lambda r: float(r.randint(1, 3))  # noqa: E731
    cases = [
        case("sparse_with_isolated", rng, 200, 600, 15, 3, small_int),
        case("hipporag_weights", rng, 300, 900, 10, 5, hippo_weight),
        case("single_seed_unit", rng, 150, 300, 20, 1, unit),
        case("isolated_seed", rng, 120, 250, 8, 2, hippo_weight, reset_isolated=True),
        case("alpha_085", rng, 200, 500, 5, 4, hippo_weight, alpha=0.85),
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
