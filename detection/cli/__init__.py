"""The command-line layer: the one package that knows Hydra. It composes and checks configurations
(`schema`, `checks`, `trusted`), decides what a resumed run continues with (`resume`), builds a run's
pieces from its configuration (`assembly`, `job`), tracks it (`runs`, `sweep`), and holds every entry
point's job (`training`, `evaluation`, `prediction`, `exporting`, `anchor_tools`, `inspect_data`) behind
one contract (`entry`). Nothing in the core (data, models, engine, evaluation, anchor_fitting, tracking)
imports it."""
