"""Pre-flight planner: will a training run fit, what will it cost, which method — before anything is loaded.

    from peftkit.plan.memory import TrainPlanSpec, plan_training
    plan = plan_training(TrainPlanSpec(model="llama-3.1-8b", method="qlora", batch=4, seq=2048))

Modules: architecture (config → meta model), activations (traced saved tensors), memory (the
breakdown), sharding (one GPU's share under DDP / ZeRO / FSDP), hardware (GPU catalog, this machine),
advise (verdicts, changes that fit), cost (time, price, storage), report (the `peftkit plan` output),
guard (`peftkit train` stops before loading).
"""
