"""Estimate of GPU memory per device for a training job, before launch, from the model's
config alone (no weights loaded), calibrated against the allocator's measured peak
(bench/memory_bench.py; tests/test_memory.py holds the figures and the 15% bound).

    weights     parameters x bytes: a full fine-tune keeps fp32 master weights, and under bf16/fp16
                autocast a 16-bit copy of each (autocast keeps its casts for the backward); the frozen
                base in bf16/fp16, or 4-bit, under LoRA, with the adapter in fp32
    gradients   trainable parameters x 4 bytes
    optimizer   trainable parameters x 8 bytes (AdamW's two fp32 moments)
    activations per layer and token, in 16-bit: 12h + 4kv + 8i bytes (h hidden, kv the k/v width, i the MLP
                width: what a Llama/Qwen layer saves for its backward with a fused attention kernel, no
                s x s scores); under LoRA the frozen projections keep no inputs (8h + 4kv + 6i) and each
                adapted projection keeps its dropped-out input and mask (3 bytes per input feature); with
                activation checkpointing only each layer's input, 2h, is kept (plus one layer's full set
                while it is recomputed). The loss is taken in chunks: no full logits are held.

Gradients and activations do not peak together (the backward frees each layer's activations as
its gradients appear), so the total counts the larger of the two: weights + optimizer +
max(gradients, activations) + overhead. Measured on an H200 (Qwen2-0.5B, batch 8 x 1024 tokens,
compiled layers, flex attention): full 16.5 GiB reserved (estimate 16.6), with checkpointing 8.9
(9.3), LoRA r16 13.4 (14.4); the old Korthikanti count with full logits said 31.7, 14.1 and 25.4.

Sharding divides: ZeRO-2 splits gradients and optimizer state over the processes, ZeRO-3
and FSDP (full shard) split weights too; CPU offload moves the optimizer state (and with
ZeRO-3/FSDP the weights) off the GPU. CUDA context and allocator slack (the allocator held
0.8-0.9 GiB over its tensors' peak in every run measured) are counted as `overhead`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .job_spec import Distributed

GIB = 2**30
OVERHEAD_BYTES = 1.0 * GIB


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> "Shape":
        hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
        heads = config.get("num_attention_heads") or config.get("n_head")
        layers = config.get("num_hidden_layers") or config.get("n_layer")
        if not (hidden and heads and layers):
            raise ValueError("the model's config.json has no hidden_size / num_attention_heads / num_hidden_layers")
        return cls(
            hidden=hidden, intermediate=config.get("intermediate_size") or 4 * hidden, layers=layers, heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads, vocab=config.get("vocab_size", 32000),
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one decoder layer (Llama/Qwen/Mistral layout)."""
        d, h, i = self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, self.heads * d), "k_proj": (h, self.kv_heads * d), "v_proj": (h, self.kv_heads * d),
                "o_proj": (self.heads * d, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden  # + 2 RMSNorms
        embed = self.vocab * self.hidden
        return self.layers * per_layer + embed + (0 if self.tied else embed) + self.hidden

    def lora_parameters(self, r: int, targets: str) -> int:
        shapes = self.linear_shapes()
        names = shapes if targets.strip() == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        return self.layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names if n in shapes)


@dataclass(frozen=True)
class Estimate:
    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float
    total_gb: float
    parameters: int
    trainable_parameters: int

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(shape: Shape, *, processes: int, strategy: str = Distributed().strategy, precision: str = "bf16",
             use_lora: bool = False,
             lora_r: int = 16, lora_targets: str = "all-linear", load_in_4bit: bool = False, batch: int = 1,
             seq: int = 1024, checkpointing: bool = False, cpu_offload: bool = False) -> Estimate:
    n_params = shape.parameters()
    trainable = shape.lora_parameters(lora_r, lora_targets) if use_lora else n_params
    half = precision in ("bf16", "fp16")
    if use_lora:
        base_bytes = 0.5 if load_in_4bit else (2 if half else 4)
        weights = n_params * base_bytes + trainable * 4
    else:
        weights = n_params * (6 if half else 4)  # fp32 master weights, and autocast's 16-bit copies
    gradients = trainable * 4
    optimizer = trainable * 8

    shard = max(processes, 1)
    if strategy == "deepspeed_zero2":
        gradients /= shard
        optimizer /= shard
    elif strategy in ("deepspeed_zero3", "fsdp"):
        weights /= shard
        gradients /= shard
        optimizer /= shard
    if cpu_offload:
        optimizer = 0
        if strategy in ("deepspeed_zero3", "fsdp"):
            weights = 0 if strategy == "deepspeed_zero3" else weights

    tokens, act_scale = seq * batch, (1 if half else 2)  # 16-bit activations; fp32 doubles them
    full_layer = tokens * layer_bytes(shape, lora_r if use_lora else 0, lora_targets) * act_scale
    if checkpointing:
        activations = shape.layers * 2 * tokens * shape.hidden * act_scale + full_layer
    else:
        activations = shape.layers * full_layer

    parts = [weights, gradients, optimizer, activations, OVERHEAD_BYTES]
    total = weights + optimizer + max(gradients, activations) + OVERHEAD_BYTES
    return Estimate(*(round(x / GIB, 3) for x in parts), total_gb=round(total / GIB, 3),
                    parameters=n_params, trainable_parameters=trainable)


def layer_bytes(shape: Shape, lora_r: int = 0, lora_targets: str = "all-linear") -> int:
    """Bytes one decoder layer keeps for its backward per token, in 16-bit (see the module's doc). Fitted on
    measured peaks: within 1% of the activations implied by Qwen2-0.5B's full and LoRA runs on an H200."""
    h, kv, i = shape.hidden, shape.kv_heads * shape.head_dim, shape.intermediate
    if not lora_r:
        return 12 * h + 4 * kv + 8 * i
    shapes = shape.linear_shapes()
    names = shapes if lora_targets.strip() == "all-linear" else [t.strip() for t in lora_targets.split(",")]
    return 8 * h + 4 * kv + 6 * i + sum(3 * shapes[n][0] for n in names if n in shapes)


def job_kwargs(p: dict, launch, use_lora: bool) -> dict:
    """`estimate`'s arguments from a job's parameters (the form's names), its launch (job_spec.Launch) and
    whether it trains a LoRA adapter (the plugin says: plugin_code.trains_lora), for the form and the trainer."""
    dist = launch.distributed
    return dict(
        processes=launch.total_processes, strategy=dist.strategy, precision=launch.mixed_precision,
        use_lora=use_lora,
        lora_r=p.get("lora_r") or 16, lora_targets=p.get("lora_target_modules") or "all-linear",
        load_in_4bit=bool(p.get("load_in_4bit")),
        batch=p.get("per_device_train_batch_size") or 1,
        seq=p.get("max_length") or ((p.get("max_prompt_length") or 0) + (p.get("max_completion_length") or 0))
        or 1024,
        cpu_offload=dist.fsdp_cpu_offload or dist.deepspeed_cpu_offload,
    )


@dataclass(frozen=True)
class Plan:
    """How a job fits the memory it has: activation checkpointing on or off, and the batch per device
    split into micro-batches (micro_batch x accumulation = the batch asked for, so every optimiser step
    still sees the same samples)."""

    checkpointing: bool
    micro_batch: int
    accumulation: int
    estimate: Estimate
    budget_gb: float | None

    def describe(self) -> str:
        budget = f"{self.budget_gb:.1f} GiB available" if self.budget_gb is not None else "no GPU memory limit known"
        return (f"activation checkpointing {'on' if self.checkpointing else 'off'}, micro-batch {self.micro_batch} x "
                f"{self.accumulation} accumulation, about {self.estimate.total_gb:.1f} GiB estimated of {budget}")


def plan(shape: Shape, budget_gb: float | None, *, checkpointing: str = "auto", batch: int = 1,
         split: bool = True, **kwargs) -> Plan:
    """The fastest settings whose estimate fits `budget_gb`: checkpointing off at the whole batch, then on,
    then (with `split`) halved micro-batches and more accumulation. `checkpointing` "on"/"off" is kept as
    asked; without a budget (CPU, or unknown) nothing is split and "auto" means off (recomputing costs
    time and saves nothing there)."""
    choices = [False, True] if checkpointing == "auto" else [checkpointing == "on"]
    micro = batch
    while True:
        for ckpt in choices:
            est = estimate(shape, batch=micro, checkpointing=ckpt, **kwargs)
            if budget_gb is None or est.total_gb <= budget_gb:
                return Plan(ckpt, micro, batch // micro, est, budget_gb)
        smaller = next((m for m in range(micro // 2, 0, -1) if batch % m == 0), None) if split else None
        if smaller is None:  # nothing left to split: the smallest plan, and the estimate says it may not fit
            return Plan(choices[-1], micro, batch // micro, est, budget_gb)
        micro = smaller


GB = 2**30  # disk sizes in GiB, the one unit the page uses (memory estimates, the Computer tab)


@dataclass(frozen=True)
class DiskEstimate:
    checkpoint_gb: float
    checkpoints: int | None  # how many are kept at once; None: every one (no limit set)
    output_gb: float
    total_gb: float | None  # None when the number of checkpoints is not bounded

    def as_dict(self) -> dict:
        return asdict(self)


def disk(shape: Shape, *, use_lora: bool, trainable: int, weight_bytes: int, checkpoints: int | None,
         fuse: bool = False) -> DiskEstimate:
    """Disk a job writes: each checkpoint holds the trained weights (the adapter under LoRA) and
    AdamW's two moments in the weights' precision; the output holds the model or the adapter (and,
    fused, the merged model in 16 bits). `weight_bytes`: 4 for fp32 master weights, 2 for 16-bit."""
    params = shape.parameters()
    saved = trainable * (4 if use_lora else weight_bytes)
    checkpoint = saved + trainable * 2 * (4 if use_lora else weight_bytes)
    output = saved + (params * 2 if use_lora and fuse else 0)
    total = None if checkpoints is None else checkpoints * checkpoint + output
    return DiskEstimate(round(checkpoint / GB, 6), checkpoints, round(output / GB, 6),
                        None if total is None else round(total / GB, 6))
