"""SkeletonMAE pre-training (docs/design.md section 5): ``pretrain(config)``. ``model.objective``
picks the model: "frame", the paper's per-frame SkeletonMAE; "trunk", TrunkMAE over the whole
STRL trunk the classifier fine-tunes (its clips' length is the trunk's num_frames)."""

from . import distributed, engine, inputs
from .checkpoint import construct
from .config import resolve_clip_len

OBJECTIVES = {"frame": "SkeletonMAE", "trunk": "TrunkMAE"}  # model.objective: the model class


def plan(config):
    """The resolved configuration, model and training set of a pre-training run (nothing is
    written: ``--print-config`` stops here)."""
    config, device = engine.start("pretrain", config)
    data_config = config["data"]
    data_config["clip_len"] = resolve_clip_len(data_config["clip_len"])
    source, split = data_config["source"], data_config["split"]
    data = inputs.read(source, [split])
    layout = inputs.resolve_layout(data_config["layout"], data, source)
    data_config["layout"] = inputs.layout_name(layout, data_config["layout"])
    data_config["num_person"] = inputs.resolve_num_person(data_config["num_person"], data, [split])
    train_set = inputs.dataset(data, data_config, split, layout, data_config["num_person"], mode="train",
                               seed=config["train"]["seed"])
    args = {key: value for key, value in config["model"].items() if key != "objective"}
    args["in_channels"] = train_set.in_channels
    model_class = OBJECTIVES[config["model"]["objective"]]
    if model_class == "TrunkMAE":
        args["num_frames"] = data_config["clip_len"]
    model = construct(model_class, layout, args)
    record = {"model_class": model_class, "model_args": args, "layout": layout.to_dict(),
              "class_names": train_set.class_names}
    return engine.Plan("pretrain", config, device, model, record, train_set, _loss)


def _loss(forward, x, y):
    output = forward(x)
    # The loss is the mean over the masked joints, whose count varies with the persons and
    # frames that are padding. Weighted by its share of the masked joints, each process's loss
    # averages over the processes (as DDP averages the gradients) to the mean over every masked
    # joint of the global batch, as in one process (where the weight is 1).
    masked = output.mask.sum().clamp(min=1)
    return output.loss * (masked / distributed.mean_over_ranks(masked)), None


def pretrain(config, callbacks=()):
    """Pre-trains SkeletonMAE on ``config`` (a nested dict of options over
    ``config.DEFAULTS["pretrain"]``: at least data.source, data.split and train.work_dir);
    resumes from the work directory's latest.pth. Returns the last epoch's log fields, the
    step and the checkpoint's path. ``callbacks``: see engine.fit."""
    return engine.fit(plan(config), callbacks)
