"""A small multi-agent workflow on SOLLOL: role prompts in parallel, then one synthesis.

Each "agent" is a system prompt that looks at the same question from one angle. SOLLOL runs
the agents in parallel over the cluster's nodes (as many at once as the nodes can serve), keeps
each agent's failure with that agent, and a final request merges the answers that came back.

    python examples/multi_agent.py "Should we move the billing service to a queue?" \
        --node 127.0.0.1:11434 --node 10.0.0.7:11434 --model llama3.2

Without --node it uses the nodes in SOLLOL's config (`sollol config show`).
"""

from __future__ import annotations

import argparse
import sys

import sollol

ROLES = {
    "architect": "You are a software architect. Lay out the design options and their "
                 "trade-offs in a few bullet points.",
    "skeptic": "You are a skeptical reviewer. List the risks and what could go wrong.",
    "operator": "You run production systems. Say what this costs to deploy, monitor and "
                "keep running.",
    "user-advocate": "You speak for the users. Say what they would notice, good or bad.",
}
SYNTHESIS = ("Four reviewers answered the question below from different angles. Write one "
             "recommendation: a decision, the three strongest reasons, and the main risk to "
             "watch. Question: {question}")


def run(question: str, model: str, nodes: list[str], synthesis_model: str | None = None,
        concurrency: int | None = None) -> int:
    """Ask every role in parallel, print each answer, then print the synthesis."""
    tasks = [sollol.Task.chat(model, question, system=prompt, id=role)
             for role, prompt in ROLES.items()]
    with sollol.Cluster(nodes=nodes or None) as cluster:
        results = cluster.gather(tasks, concurrency=concurrency)
        for result in results:
            where = f"via {result.response.backend}" if result.ok else f"FAILED: {result.error}"
            print(f"## {result.id} ({where}, {result.seconds:.1f}s)\n{result.text}\n")
        if not any(r.ok for r in results):
            print("no agent answered; nothing to synthesize", file=sys.stderr)
            return 1
        final = cluster.synthesize(synthesis_model or model, results,
                                   SYNTHESIS.format(question=question))
    print(f"## synthesis (via {final.backend})\n{final.text}")
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--model", required=True, help="model every agent uses")
    parser.add_argument("--synthesis-model", help="model for the final answer (default: --model)")
    parser.add_argument("--node", action="append", default=[], help="pool node (repeatable)")
    parser.add_argument("--concurrency", type=int, help="agents at once (default: capacity)")
    args = parser.parse_args(argv)
    try:
        return run(args.question, args.model, args.node, args.synthesis_model, args.concurrency)
    except sollol.SollolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
