"""Sizes per profile, kept once: `smoke` fits 2 shared CPU cores and CI (the embedded default), `full` a GPU
cluster. Keys are dotted config paths (snake_case); `Settings.option(path)` takes the stack's value, else the
profile's here, else None, which the workload reads as its own default."""

PROFILES: dict[str, dict[str, object]] = {
    "smoke": {
        "storage.size_mb": 64,
        "slurm_probe.jobs": 10,
        # 3 epochs of the small net reach ~0.72 on 2 CPU cores in about a minute (docs/benchmarks.md)
        "cifar.epochs": 3,
        # 4 steps of batch 4 at 128 tokens show the loss and held-out loss moving on CPU
        "llm.max_steps": 4, "llm.global_batch_size": 4, "llm.seq_len": 128, "llm.eval_samples": 8, "llm.lr": 1e-4,
        # MLOPS-3.x: a few minutes on 2 CPU cores for both tasks
        "oumi.train_steps": 4, "oumi.eval_samples": 4, "oumi.max_new_tokens": 128, "oumi.max_length": 128,
        # load tests: seconds on 2 shared CPU cores
        "serving.cpu.stages": ["users=1", "users=4", "users=2,rate=20"], "serving.cpu.stage_seconds": 8,
        "serving.llm.stages": ["users=1", "users=4,rate=2"], "serving.llm.stage_seconds": 8,
    },
    "full": {
        # MNIST: 20 epochs of batch 4096 keep one H200 busy (utilisation 73.5-76.8 % in three runs, sampled after
        # 5 warm-up steps) at test accuracy 0.992; the default 2 x 512 left it at 33 % (docs/benchmarks.md, "MNIST
        # on one H200: work a step")
        "mnist.epochs": 20, "mnist.batch_size": 4096,
        "storage.size_mb": 4096,
        "slurm_probe.jobs": 100,
        # cifar.epochs: the workload's own default (10 epochs of airbench94). llm: 100 packed steps of 128 records
        # fill one H200 (94.6 % utilisation, 281 k tokens/s, MFU 22.9 %) with the same held-out drop as 200 x 32
        # (docs/benchmarks.md, "LLM fine-tuning trainer on one H200")
        "llm.max_steps": 100, "llm.global_batch_size": 128,
        "oumi.train_steps": 100, "oumi.eval_samples": 252, "oumi.max_new_tokens": 384, "oumi.max_length": 512,
        "serving.cpu.stages": ["users=1", "users=16", "users=8,rate=200"], "serving.cpu.stage_seconds": 30,
        "serving.llm.stages": ["users=1", "users=32", "users=64,rate=200"], "serving.llm.stage_seconds": 30,
    },
}
