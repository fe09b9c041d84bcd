"""`bn-repro describe`: what an experiment will train, in numbers a reader can check."""

from bn_repro import paper
from bn_repro.hparams import effective_hparams
from bn_repro.models import build_model
from bn_repro.models.summary import layer_table
from bn_repro.schema import RunConfig


def describe(cfg: RunConfig, world_size: int = 1, images_per_s: float | None = None) -> str:
    """What a run of cfg on world_size ranks trains, and what it costs at images_per_s per GPU."""
    hp = effective_hparams(cfg, world_size)
    optim, model_cfg = cfg.optim, cfg.model
    lines = [
        f"experiment: {cfg.name}",
        f"effective hyperparameters on {world_size} rank{'s' if world_size > 1 else ''}:",
        f"  batch per rank  {hp.batch_per_rank} images a step",
        _bn_batch(hp.bn_batch, hp.batch_per_rank),
        f"  global batch    {hp.global_batch} = {hp.batch_per_rank} x {world_size} images per step"
        " (the update)",
        f"  learning rate   {hp.lr:.6g} = {optim.base_lr:g} x {optim.lr_multiplier:g} (multiplier)"
        f" x {hp.lr_scale:g} ({optim.lr_scaling.value} scaling from the paper's batch)",
        f"  momentum        {hp.momentum:g}",
        f"  weight decay    {hp.weight_decay:.6g} = {optim.weight_decay:g} / {optim.l2_divisor:g}",
        f"  lr decay        x{hp.lr_decay_factor:g} every {hp.lr_decay_every_paper_steps:,.1f}"
        f" paper steps (= {optim.lr_decay_every_paper_steps:,.0f} / {optim.decay_speedup:g})",
        f"  dropout         {hp.dropout:g}",
        f"  LRN             {'on' if hp.lrn else 'off'}",
        f"  normalization   {hp.norm}",
        f"  nonlinearity    {hp.activation}",
        f"  photometric     {hp.photometric}",
        f"  shuffle         {hp.shuffle}",
        *_length(cfg.trainer.max_paper_steps, world_size, images_per_s),
        f"model: Inception (Fig. 5), {model_cfg.stem.value} first convolution, 4c/4d pool"
        f" projections {model_cfg.pool_proj_4cd}, auxiliary heads"
        f" {'on' if model_cfg.aux_heads else 'off'}",
        f"  initial convolution weights {model_cfg.conv_init_scale:g} x He's (ReLU) or Xavier's"
        f" (sigmoid); per-activation BN in"
        f" {', '.join(model_cfg.per_activation_bn) or 'no module'} (Sec. 4.2.3)",
    ]
    model = build_model(model_cfg, cfg.data.num_classes, cfg.data.image_size)
    rows = layer_table(model, cfg.data.image_size)
    size = cfg.data.image_size
    lines.append(f"layers for one 3x{size}x{size} image, {cfg.data.num_classes} classes:")
    lines.append(f"  {'layer':<14}{'type':<26}{'output':>12}{'params':>12}{'multiply-adds':>16}")
    for row in rows:
        shape = "x".join(map(str, row.output_shape))
        lines.append(
            f"  {row.name:<14}{row.kind:<26}{shape:>12}{row.params:>12,}{row.multiply_adds:>16,}"
        )
    inference_macs = sum(row.multiply_adds for row in rows if row.inference)
    lines.append(f"parameters: {sum(p.numel() for p in model.parameters())}")
    lines.append(f"multiply-adds: {inference_macs}")
    return "\n".join(lines)


def _bn_batch(bn_batch: int | None, batch_per_rank: int) -> str:
    """The images BN normalizes over, and how a rank's batch holds them."""
    if bn_batch is None:
        return "  BN batch        - (no BN)"
    groups = batch_per_rank // bn_batch
    held = "the rank's batch" if groups == 1 else f"{groups} groups a rank (ghost BN)"
    return f"  BN batch        {bn_batch} images, {held}; the paper's: {paper.BATCH_SIZE}"


def _length(paper_steps: float, world_size: int, images_per_s: float | None) -> list[str]:
    """The run's length in paper steps and images, and its cost at images_per_s per GPU."""
    images = paper_steps * paper.BATCH_SIZE
    lines = [f"  run length      {paper_steps:,.0f} paper steps = {images / 1e6:,.1f} M images"]
    if images_per_s is None:
        lines.append(
            "  GPU-hours       give --images-per-s (per GPU; `bn-repro bench train` measures it)"
        )
    else:
        hours = images / images_per_s / 3600
        lines.append(
            f"  GPU-hours       {hours:,.1f} at {images_per_s:,.0f} images/s per GPU"
            f" ({hours / world_size:,.1f} h on {world_size} GPU{'s' if world_size > 1 else ''})"
        )
    return lines
