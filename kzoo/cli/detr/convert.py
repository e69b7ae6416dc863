"""``kzoo convert detr SRC DST``: a facebookresearch or HuggingFace checkpoint as a kzoo preset."""


def register(commands):
    p = commands["convert"].add_parser(
        "detr",
        help="convert a facebookresearch or HuggingFace DETR checkpoint into a kzoo preset",
        description=(
            "Convert a DETR checkpoint (the original {'model': state_dict} .pth, or a "
            "HuggingFace DetrForObjectDetection .pth/.bin/.safetensors) into a kzoo preset "
            "directory. Needs torch for .pth/.bin files, whatever the keras backend."
        ),
    )
    p.add_argument("src", help="checkpoint file (or a directory holding model.safetensors)")
    p.add_argument("dst", help="preset directory to write")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads (default 8)")
    p.add_argument(
        "--no-overwrite", action="store_true", help="refuse to replace a preset already at DST"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace DST even if it holds files that are not a kzoo preset (they are deleted); "
        "without it such a DST is refused",
    )
    dc5 = p.add_mutually_exclusive_group()
    dc5.add_argument(
        "--dc5",
        dest="dilation",
        action="store_const",
        const=True,
        default=None,
        help="the checkpoint is DETR-DC5 (dilated last stage); by default read from the "
        "checkpoint's stored arguments, a config.json beside it, or a -dc5 file name",
    )
    dc5.add_argument(
        "--no-dc5",
        dest="dilation",
        action="store_const",
        const=False,
        help="the checkpoint is a plain DETR, whatever its name says",
    )
    p.set_defaults(func=cmd_convert)


CLI_OPTIONS = {"overwrite": "drop --no-overwrite", "force": "pass --force"}


def cmd_convert(args):
    from kzoo.models.detr.convert import convert_detr
    from kzoo.presets import preset_io
    from kzoo.utils.paths import check_input_file

    if args.num_heads is not None and args.num_heads < 1:
        raise ValueError(f"--num-heads must be >= 1; got {args.num_heads}.")
    if args.force and args.no_overwrite:
        raise ValueError("--force and --no-overwrite contradict each other; pass one of them.")
    check_input_file(args.src, "SRC", allow_directory=True)
    # With the CLI's flags in the message, and before the conversion's work.
    preset_io.check_destination(
        args.dst, overwrite=not args.no_overwrite, force=args.force, options=CLI_OPTIONS
    )
    dst = convert_detr(
        args.src,
        args.dst,
        num_heads=args.num_heads,
        overwrite=not args.no_overwrite,
        force=args.force,
        dilation=args.dilation,
    )
    meta = preset_io.read_metadata(dst)
    config = preset_io._read_config(dst)["config"]
    print(
        f"converted {args.src} ({meta.get('source_format')} format) -> {dst}\n"
        f"  backbone {config['backbone']}{' (DC5)' if config.get('backbone_dilation') else ''}, "
        f"{config['num_classes']} classes, "
        f"{config['num_queries']} queries, d_model {config['d_model']}, "
        f"{config['num_encoder_layers']}+{config['num_decoder_layers']} layers"
    )
    return 0
