"""The seed tables and the quantization ablation, from ONE teacher and ONE half-width model, every
finished run recorded under ``results/`` for README's tables (``launch.tables``).

    python -m launch.sweep configs/sweeps/fidelity.py                 # MRPC W1A8, 1 epoch a KD stage
    python -m launch.sweep configs/sweeps/fidelity.py:act_bits=4,epochs=0.5
    python -m launch.sweep configs/sweeps/fidelity.py:parts=ablation,seeds=4+5
    python -m launch.sweep configs/sweeps/fidelity.py:task=sst-2,tiny,seeds=1,tag=smoke   # minutes

Parts, in the order they run (``parts`` picks and orders them); the runs are named as listed:

    seeds/s<seed>      the pipeline's ternary and binary rows: TWN 0.5x, split, TWS 1x, and the
                       binary baselines ``binary`` names: BWN 0.5x (bwn) and/or BWN 1.0x (bwn_full),
                       binarized from the full-width teacher (the papers' pairing with TWS 1x)
                       -> results/<tag>_w1a<bits>_seeds/{ternary,tws,bwn,bwn_full}/s<seed>
    ablation/<setting>/s<seed>
                       TWN 0.5x with one thing varied (ABLATIONS below; ``both`` is the seeds
                       part's ternary stage, trained alone when that part has not run)
                       -> results/<tag>_quant_ablation/<setting>/s<seed>
    half/s<seed>       the full-precision 0.5x row: the half-width model's KD from the teacher
                       -> results/<tag>_w1a<bits>_seeds/half/s<seed>
    adaptive/s<seed>   the adaptive split, at the first seed only
                       -> results/<tag>_w1a<bits>_seeds/adaptive/s<seed>
    summed/s<seed>     TWS 1x trained on one product of the summed halves (split_forward=summed),
                       split from the seeds part's TWN 0.5x checkpoint and trained at its seed, so
                       that it pairs with that part's TWS 1x, whose training forward multiplies
                       each half; not run unless ``parts`` names it
                       -> results/<tag>_w1a<bits>_seeds/tws_summed/s<seed>

and ``base``, the teacher and half-width model every other run starts from (``base_dir``; trained
when a run needs it; recorded with ``record_base``).

``arg`` keys: ``task`` (mrpc); ``act_bits`` (8); ``epochs`` (1, per KD stage; the released scripts
use 2); ``seeds`` (1+2+3); ``parts`` (seeds+ablation+half+adaptive; summed too on request); ``ablations`` (the settings
besides ``both``, default no_clip+percentile+acts_only+weights_only, what README's table ran);
``binary`` (bwn; the seeds part's binary baselines among bwn and bwn_full; empty: none);
``clip`` (the 8-bit activation-clip preset of every quantized stage: released, none or
percentile; any other than released suffixes the run folders and the seed and ablation tables
with _clip_<clip>, e.g. results/mrpc_w1a8_clip_none_seeds, and names the preset in the ablation
rows' settings; the half part records to the unsuffixed seed table whatever the clip, as the
full-precision half-width model has none); ``float32`` (float32 quantized products and teacher,
as README's 1-epoch MRPC W1A8 tables trained: matmul_precision=float32, teacher_dtype unset);
``root`` (runs/fidelity_<task>_a<bits>); ``tag`` (the records' prefix, default the task);
``base_dir`` (a finished teacher and half-width model to start from, default <root>/base, trained
there when missing; another root's base is only read, e.g. a float32 base under bfloat16 runs:
the full-precision stages' products do not use matmul_precision); ``record_base`` (record the
base's teacher and half-width model, under ``base_table``, default <tag>_w1a<bits>_base, their
settings the stages' descriptions, followed by ", <base_note>" when given: e.g.
``record_base,base_table=mrpc_w1a8_rerun,base_note=retrained``); ``data_dir``
(the GLUE root; default $GLUE_DIR, or with ``tiny`` the shipped slice); ``tiny`` (the pipeline's
tiny variant: a smoke run of the whole sweep in minutes).
"""

from configs import common
from configs import pipeline as pipeline_config
from configs.sweeps import Best, Record, Run, words

PARTS = ("seeds", "ablation", "half", "adaptive", "summed")
DEFAULT_PARTS = PARTS[:4]
BINARY = ("bwn", "bwn_full")
CLIP_PRESETS = ("released", "none", "percentile")
TERNARY, QUANT = "stages.ternary", "stages.ternary.student.quant"


def ablations(bits: int, stage: dict) -> dict:
    """Each ablation setting: its table row and the ternary stage's overrides. ``stage`` holds the
    base config's ternary epochs and learning rates (e1, e2, lr1, lr2), which two settings scale."""
    twn = f"TWN 0.5× W2A{bits}"
    return {
        "no_clip": (f"{twn}, no activation clip (min-max)", {f"{QUANT}.clip_init": 1e4}),
        "per_token": (f"{twn}, per-token min-max ranges (no clip)",
                      {f"{QUANT}.clip_init": 1e4, f"{QUANT}.act_scope": "token"}),
        "percentile": (f"{twn}, clips from the data (99.9th percentile)",
                       {f"{QUANT}.clip_percentile": 99.9}),
        "acts_only": (f"W32A{bits} (activations only)", {f"{QUANT}.weight_bits": 32, f"{QUANT}.embed_bits": 32}),
        "weights_only": ("TWN 0.5× W2A32 (weights only)", {f"{QUANT}.act_bits": 32}),
        "hidden_only": (f"{twn}, stage 1 on hidden states only", {f"{TERNARY}.kd.attention": False}),
        "full_teacher": (f"{twn}, full-width teacher (hidden states only)",
                         {f"{TERNARY}.teacher": "teacher", f"{TERNARY}.kd.attention": False}),
        # One stage as long as the two together, at stage 1's learning rate.
        "joint": (f"{twn}, one joint KD stage",
                  {f"{TERNARY}.kd.mode": "joint", f"{TERNARY}.stage2.epochs": stage["e1"] + stage["e2"],
                   f"{TERNARY}.stage2.learning_rate": stage["lr1"]}),
        "epochs2": (f"{twn}, twice the epochs a KD stage",
                    {f"{TERNARY}.stage1.epochs": 2 * stage["e1"], f"{TERNARY}.stage2.epochs": 2 * stage["e2"]}),
        "lat": (f"LAT 0.5× W2A{bits} (loss-aware ternary weights)", {f"{QUANT}.weight_method": "lat"}),
        "bf16": (f"{twn}, bfloat16 backward products and teacher",
                 {"matmul_precision": "bfloat16", "teacher_dtype": "bfloat16"}),
    }


def _check(name: str, values: list, allowed) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {name} {' '.join(unknown)} (allowed: {', '.join(allowed)})")


def get_runs(arg=None) -> list:
    a = common.parse_arg(arg, task="mrpc", act_bits=8, epochs=1.0, seeds="1 2 3",
                         parts=" ".join(DEFAULT_PARTS), ablations="no_clip percentile acts_only weights_only",
                         binary="bwn", clip="released", float32=False, root="", tag="", base_dir="",
                         record_base=False, base_table="", base_note="", data_dir="", tiny=False)
    bits, seeds, parts, binary = a.act_bits, words(a.seeds), words(a.parts), words(a.binary)
    _check("part", parts, PARTS)
    _check("binary stage", binary, BINARY)
    _check("clip", [a.clip], CLIP_PRESETS)
    if not seeds:
        raise ValueError("seeds is empty; give at least one, e.g. seeds=1+2+3")
    root = a.root or f"runs/fidelity_{a.task}_a{bits}"
    tag = a.tag or a.task
    base_dir = a.base_dir or f"{root}/base"
    base_table = a.base_table or f"{tag}_w1a{bits}_base"
    size = "tiny" if a.tiny else "full"
    pipeline_arg = (f"task={a.task},{size},act_bits={bits},epochs={a.epochs:g},bwn=False,adaptive=False,"
                    f"clip={a.clip}")
    base_config = pipeline_config.get_config(pipeline_arg)
    config = f"configs/pipeline.py:{pipeline_arg}"
    shared = {}
    if a.data_dir:
        shared["data_dir"] = a.data_dir
    if a.float32:
        shared.update({"matmul_precision": "float32", "teacher_dtype": ""})
    suffix, clip_label = ("", "") if a.clip == "released" else (f"_clip_{a.clip}", f", on the clip={a.clip} preset")
    half_table, seed_table = f"{tag}_w1a{bits}_seeds", f"{tag}_w1a{bits}{suffix}_seeds"
    ablation_table = f"{tag}{suffix}_quant_ablation"
    t = base_config.stages.ternary
    settings = ablations(bits, {"e1": t.stage1.epochs, "e2": t.stage2.epochs,
                                "lr1": t.stage1.learning_rate, "lr2": t.stage2.learning_rate})
    chosen = words(a.ablations)
    _check("ablation", chosen, tuple(settings))

    runs = []
    own_base = base_dir == f"{root}/base"  # another root's base is only read
    if own_base:
        runs.append(Run("base", "launch.pipeline", base_dir, config,
                        {**shared, "pipeline.stages": ("teacher", "half_pruned", "half")},
                        records=tuple(Record(f"{base_dir}/{stage}", f"{base_table}/{stage}",
                                             f"{base_config.stages[stage].description}, {a.base_note}"
                                             if a.base_note else None)
                                      for stage in ("teacher", "half")) if a.record_base else (),
                        outputs=(f"{base_dir}/teacher/results.json", f"{base_dir}/half/results.json")))
    needs = ("base",) if own_base else ()
    from_base = {"stages.teacher.checkpoint": Best(f"{base_dir}/teacher"),
                 "stages.half.checkpoint": Best(f"{base_dir}/half"), "stages.half.init": ""}
    seed_stages = ("teacher", "half", "ternary", "tws_init", "tws", *binary)

    def pipeline(name, workdir, stages, seed, overrides=None, records=()):
        runs.append(Run(name, "launch.pipeline", workdir, config,
                        {**shared, "pipeline.stages": stages, **from_base, "seed": seed, **(overrides or {})},
                        records=records, needs=needs))

    for part in parts:
        for seed in seeds:
            seed = int(seed)
            seeds_run = f"{root}/w1a{bits}{suffix}_s{seed}"
            if part == "seeds":
                pipeline(f"seeds/s{seed}", seeds_run, seed_stages, seed, records=tuple(
                    Record(f"{seeds_run}/{stage}", f"{seed_table}/{stage}/s{seed}")
                    for stage in ("ternary", "tws", *binary)))
            elif part == "ablation":
                # "both" is the seeds part's ternary stage, trained here only when that part has
                # not (a pipeline rewrites its report for the stages it is given).
                pipeline(f"ablation/both/s{seed}", seeds_run, ("teacher", "half", "ternary"), seed, records=(
                    Record(f"{seeds_run}/ternary", f"{ablation_table}/both/s{seed}",
                           f"TWN 0.5× W2A{bits} (weights and activations){clip_label}"),))
                for key in chosen:
                    label, overrides = settings[key]
                    workdir = f"{root}/{key}{suffix}_s{seed}"
                    pipeline(f"ablation/{key}/s{seed}", workdir, ("teacher", "half", "ternary"), seed,
                             overrides, records=(Record(f"{workdir}/ternary", f"{ablation_table}/{key}/s{seed}",
                                                        label + clip_label),))
            elif part == "half":
                workdir = f"{root}/half_s{seed}"  # the half-width stage itself at this seed
                runs.append(Run(f"half/s{seed}", "launch.pipeline", workdir, config,
                                {**shared, "pipeline.stages": ("teacher", "half_pruned", "half"),
                                 "stages.teacher.checkpoint": Best(f"{base_dir}/teacher"), "seed": seed},
                                records=(Record(f"{workdir}/half", f"{half_table}/half/s{seed}"),),
                                needs=needs))
            elif part == "summed":
                # The seeds part's ternary checkpoint, split and trained again at the same seed:
                # the one difference from that part's TWS run is the training forward.
                workdir = f"{root}/tws_summed{suffix}_s{seed}"
                runs.append(Run(f"summed/s{seed}", "launch.pipeline", workdir, config,
                                {**shared, "pipeline.stages": ("teacher", "half", "ternary", "tws_init", "tws"),
                                 **from_base, "stages.ternary.checkpoint": Best(f"{seeds_run}/ternary"),
                                 "stages.tws.student.quant.split_forward": "summed", "seed": seed},
                                records=(Record(f"{workdir}/tws", f"{seed_table}/tws_summed/s{seed}",
                                                f"{base_config.stages.tws.description}, trained on the "
                                                f"summed halves{clip_label}"),),
                                needs=needs + ((f"seeds/s{seed}",) if "seeds" in parts else ())))
            elif part == "adaptive" and seed == int(seeds[0]):
                # The seeds part's stages (skipped where finished), then the adaptive split.
                pipeline(f"adaptive/s{seed}", seeds_run, (*seed_stages, "adaptive_init", "adaptive"), seed,
                         records=(Record(f"{seeds_run}/adaptive", f"{seed_table}/adaptive/s{seed}"),))
    return runs
