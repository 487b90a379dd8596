"""SSL classifier fine-tuning and linear probing (docs/design.md section 6): ``finetune(config)``.

With ``train.pretrained`` (a pre-training checkpoint or its work directory), the layout and the
encoder's widths default to the checkpoint's, and the classifier starts from its weights
(``SSLClassifier.load_pretrained``): a trunk pre-training's every trunk weight, a per-frame one's
encoder in every STRL layer; the log says which weights were loaded and which start random.
``model.freeze_encoder`` is the linear probe.
"""

import torch.nn.functional as F

from .. import pretrained as shipped
from . import engine, inputs, metrics
from .checkpoint import CheckpointError, construct, load, require_kind
from .config import AUTO, resolve_clip_len
from .evaluate import predict
from .workdir import find_checkpoint

# The encoder's shape: a pre-trained encoder fits only a model built with its values; a trunk's
# (TrunkMAE) also fixes the STRL's.
ENCODER_ARGS = ("embed_dim", "num_layers", "learn_eps")
TRUNK_ARGS = ENCODER_ARGS + ("num_strl_layers", "pooling", "joint_embedding")


def plan(config):
    """The resolved configuration, model, datasets and validation of a fine-tuning run (nothing
    is written: ``--print-config`` stops here)."""
    config, device = engine.start("finetune", config)
    data_config, train = config["data"], config["train"]
    source = data_config["source"]
    splits = [data_config["train_split"], data_config["val_split"]]
    data = inputs.read(source, splits)
    pretrained = _pretrained(train["pretrained"])
    data_config["clip_len"] = resolve_clip_len(data_config["clip_len"],
                                               pretrained[1]["model_args"]["num_frames"] if _is_trunk(pretrained) else None)
    layout_option = data_config["layout"]
    if pretrained is not None:
        layout = _pretrained_layout(pretrained, layout_option, data, source)
    else:
        layout = inputs.resolve_layout(layout_option, data, source)
    data_config["layout"] = inputs.layout_name(layout, layout_option)
    num_person = data_config["num_person"] = inputs.resolve_num_person(data_config["num_person"], data, splits)
    train_set = inputs.dataset(data, data_config, data_config["train_split"], layout, num_person, mode="train",
                               seed=train["seed"], label_fraction=data_config["label_fraction"])
    val_set = inputs.dataset(data, data_config, data_config["val_split"], layout, num_person, mode="test",
                             num_clips=data_config["val_clips"])
    config["model"] = _model_args(config["model"], pretrained, train_set.in_channels, data_config["clip_len"])
    args = dict(config["model"], num_classes=train_set.num_classes, in_channels=train_set.in_channels,
                num_frames=data_config["clip_len"], num_persons=num_person)
    model = construct("SSLClassifier", layout, args)
    loaded, notes = [], []
    if pretrained is not None:
        loaded, random = model.load_pretrained(pretrained[1])
        notes.append(f"from {pretrained[0]}: {len(loaded)} weights loaded ({_summary(loaded)}); {len(random)} start "
                     f"random ({_summary(random)})")
    record = {"model_class": "SSLClassifier", "model_args": args, "layout": layout.to_dict(),
              "class_names": train_set.class_names}
    smoothing = config["optim"]["label_smoothing"]

    def loss(forward, x, y):
        logits = forward(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=smoothing), (logits.argmax(1) == y).sum()

    val_loader = inputs.loader(val_set, train["batch_size"], data_config["workers"], device, train=False)

    def validate(model):
        model.eval()
        scores, labels = predict(lambda x: model(x).softmax(1), val_loader, device, data_config["val_clips"])
        model.train()
        result = metrics.accuracy(scores, labels)
        result.pop("num_samples")
        return result

    return engine.Plan("finetune", config, device, model, record, train_set, loss, validate,
                       weights=pretrained and pretrained[0], loaded=loaded, notes=notes)


def finetune(config, callbacks=()):
    """Fine-tunes the SSL classifier on ``config`` (a nested dict of options over
    ``config.DEFAULTS["finetune"]``: at least data.source, data.train_split, data.val_split and
    train.work_dir), validating each epoch and keeping best.pth; resumes from the work
    directory's latest.pth. Returns the last epoch's log fields (val_top1, best_top1, ...).
    ``callbacks``: see engine.fit."""
    return engine.fit(plan(config), callbacks)


def _pretrained(option):
    """(path, checkpoint) of --pretrained, which must be a pre-training checkpoint or a shipped
    encoder's name (skelmae_ext.pretrained), or None."""
    if option is None:
        return None
    try:
        path = find_checkpoint(shipped.resolve(option), "--pretrained")
    except CheckpointError as error:
        raise CheckpointError(f"{error}, or the name of an encoder shipped with the package "
                              f"({', '.join(sorted(shipped.ENCODERS))})") from None
    state = load(path)
    require_kind(state, "pretrain", path, "--pretrained takes the work directory or a .pth of skelmae pretrain "
                 "(to go on with a fine-tuning run, use its --work-dir or --resume)")
    return path, state


def _pretrained_layout(pretrained, option, data, source):
    path, state = pretrained
    fix = f"{path} was pre-trained on layout {state['layout']['name']!r}: fine-tune on data of that skeleton"
    layout = inputs.resolve_layout(state["layout"] if option == AUTO else option, data, source, fix=fix)
    if layout.to_dict() != state["layout"]:
        raise CheckpointError(f"--layout {layout.name!r} is not the layout {state['layout']['name']!r} that {path} "
                              "was pre-trained on: drop --layout or pass that one")
    return layout


def _summary(names):
    """State_dict names grouped by module, up to the STRL layer: "strl.layers.0.encoder (24), head (4)"."""
    groups = {}
    for name in names:
        depth = 4 if name.startswith("strl.layers.") else 2 if name.startswith("strl.") else 1
        key = ".".join(name.split(".")[:depth])
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{key} ({count})" for key, count in groups.items()) or "none"


def _is_trunk(pretrained):
    return pretrained is not None and pretrained[1]["model_class"] == "TrunkMAE"


def _model_args(model_config, pretrained, in_channels, clip_len):
    """The model section's arguments with the encoder's "auto" widths taken from the
    pre-trained checkpoint (dropped without one: the model's defaults), checked against it."""
    args = dict(model_config)
    source = pretrained[1]["model_args"] if pretrained else {}
    trunk = _is_trunk(pretrained)
    for name in TRUNK_ARGS if trunk else ENCODER_ARGS:
        if args.get(name, AUTO) == AUTO:
            args.pop(name, None)
            if name in source:
                args[name] = source[name]
        elif pretrained and args[name] != source.get(name, args[name]):
            raise CheckpointError(f"model.{name} is {args[name]!r} but {pretrained[0]} was pre-trained with "
                                  f"{source[name]!r}: drop the option (it follows the checkpoint) or pre-train anew")
    if trunk and source["num_frames"] != clip_len:
        raise CheckpointError(f"{pretrained[0]} pre-trained the trunk on clips of {source['num_frames']} frames, and "
                              f"this run's are {clip_len}: drop --clip-len (it follows the checkpoint) or "
                              f"pass {source['num_frames']}")
    if pretrained and source["in_channels"] != in_channels:
        raise CheckpointError(f"{pretrained[0]} was pre-trained on {source['in_channels']} input channels, and this "
                              f"run's features give {in_channels}: use the pre-training's --feats and data")
    return args
