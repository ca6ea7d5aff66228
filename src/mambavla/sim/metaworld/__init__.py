"""Meta-World MT50 (LeRobot's recipe): the suite's tasks and layouts (`suite`), one task as the policy sees it
(`env`), expert demonstrations into a training pack (`demos`), closed-loop evaluation in parallel (`evaluate`).
`env`, `demos` and `evaluate` need the `metaworld` package: `make metaworld` (docs/metaworld.md)."""
