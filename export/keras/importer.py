"""``statecast import``: a ``.keras`` file -> ONNX step model, spec, parity reference, manifest.

Order of work, so that a refused model leaves nothing behind: load the file with Keras 3
(torch backend), check every layer and the chosen semantics, convert, then write the ONNX
file, check parity against Keras itself on random inputs (and on a real sample when one is
given), write the parity reference beside the ONNX file, and only then upsert the
manifest entry. A parity failure removes what was written.

The parity reference (``<name>.parity.npz``: per-step inputs and Keras's outputs) lets
``statecast models verify`` recheck an imported model with onnxruntime alone, without
keras installed; it is pinned by sha256 as the entry's ``parity_reference`` artefact.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from statecast.contract.manifest import (
    DEFAULT_MANIFEST,
    Artefact,
    ManifestEntry,
    sha256_file,
    upsert_entry,
)
from statecast.contract.spec import ModelSpec, OutputSpec, StateSpec, TensorSpec
from statecast.export.keras.graph import WHY_NOT, Converted, convert_model
from statecast.export.keras.layers import Recurrent, UnsupportedLayer
from statecast.export.keras.refstore import save_reference
from statecast.export.keras.step import (
    Adapter,
    StatefulFrameStep,
    StatefulTokenStep,
    StatelessStep,
    WindowStep,
)
from statecast.export.parity import PARITY_TOLERANCE, ParityError, step_parity
from statecast.export.step_export import export_step_model

log = logging.getLogger(__name__)

KINDS = ("forecast", "sentiment", "video", "classify")
MODES = ("window", "stateful")
DEFAULT_CHUNK = 128
PARITY_BATCH = 4
PARITY_EVENTS = 6  # events beyond the window (window mode) / steps (stateful mode)
Array = np.ndarray[Any, Any]


class ImportError_(ValueError):
    """The model cannot be imported as asked (unsupported layer, shape, option)."""


@dataclass(frozen=True)
class ImportOptions:
    name: str
    kind: str
    mode: str | None = None  # default: window for a fixed time axis, else stateful
    features: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()
    output_mean: tuple[float, ...] = ()
    output_std: tuple[float, ...] = ()
    pixel_scale: float = 1.0 / 255.0
    chunk: int = DEFAULT_CHUNK
    tokenizer: Path | None = None
    version: str = "1"
    seed: int = 0


@dataclass(frozen=True)
class ImportResult:
    entry: ManifestEntry
    spec: ModelSpec
    onnx_path: Path
    parity_random: float
    parity_real: float | None
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


def load_keras(path: Path) -> Any:
    """The model in ``path``, read by Keras 3 on the torch backend (no TensorFlow)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ModuleNotFoundError as exc:
        raise ImportError_(
            "reading .keras files needs keras: pip install 'statecast[import]'"
        ) from exc
    if keras.backend.backend() != "torch":
        raise ImportError_(
            f"keras runs on the {keras.backend.backend()!r} backend; set KERAS_BACKEND=torch"
        )
    layers = _saved_layers(path)
    for name, kind, _ in layers:  # refuse by name before keras tries to build the layer
        if kind in WHY_NOT:
            raise ImportError_(f"layer {name!r} ({kind}) is not supported: {WHY_NOT[kind]}")
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # a broken zip, config or h5 file raises almost anything
        custom = [(n, k) for n, k, module in layers if not module.startswith("keras")]
        if custom:
            name, kind = custom[0]
            raise ImportError_(
                f"layer {name!r} ({kind}) is not supported: a custom layer has no converter "
                f"(and keras cannot load it without its code): {exc}"
            ) from exc
        raise ImportError_(f"{path}: keras cannot load it: {exc}") from exc


def _saved_layers(path: Path) -> list[tuple[str, str, str]]:
    """(name, class, module) of every layer in a ``.keras`` file's config, nested ones too;
    empty when the file is not a readable ``.keras`` zip (keras then says why)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: list[tuple[str, str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for value in node:
                walk(value)
            return
        if not isinstance(node, dict):
            return
        inner = node.get("config")
        name = inner.get("name") if isinstance(inner, dict) else None
        kind = node.get("class_name")
        if isinstance(name, str) and isinstance(kind, str) and "module" in node:
            module = str(node.get("module") or "")
            if node.get("registered_name") and "keras" not in module:
                module = ""  # a registered custom class: its own package
            found.append((name, kind, module or "custom"))
        for value in node.values():
            walk(value)

    walk(config)
    return found


def keras_predict(model: Any) -> Callable[[Array], Array]:
    import keras

    # A model trained with stateful=True keeps its RNN state between calls and may fix the
    # batch size: every reference call starts from a zero state, in batches of that size.
    stateful = [layer for layer in _all_layers(model) if getattr(layer, "stateful", False)]
    fixed = model.inputs[0].shape[0]

    def call(x: Array) -> Array:
        for layer in stateful:
            layer.reset_states()
        return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float64)

    def predict(x: Array) -> Array:
        if fixed is None or len(x) == fixed:
            return call(x)
        outs = []
        for lo in range(0, len(x), fixed):
            part = x[lo : lo + fixed]
            pad = np.zeros((fixed - len(part), *x.shape[1:]), x.dtype)
            outs.append(call(np.concatenate([part, pad]))[: len(part)])
        return np.concatenate(outs)

    return predict


def _all_layers(model: Any) -> list[Any]:
    out: list[Any] = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        out += _all_layers(layer)
        if hasattr(layer, "layer"):  # TimeDistributed
            out += [layer.layer, *_all_layers(layer.layer)]
    return out


# --- plan: what the step looks like --------------------------------------------------


@dataclass(frozen=True)
class Plan:
    mode: str  # "window", "stateful" or "stateless"
    sequence_output: bool  # the model's output has the time axis: take its last step
    window: int
    fixed_time: int  # the model's time length when its input fixes one, else 0
    adapter: Adapter
    spec: ModelSpec
    step: nn.Module


def _check_stateful(conv: Converted) -> None:
    blocks = list(conv.chain.blocks)
    last = max(i for i, b in enumerate(blocks) if isinstance(b, Recurrent))
    tail_local = isinstance(blocks[last], Recurrent) and blocks[last].return_sequences
    for i, b in enumerate(blocks):
        if (i < last or tail_local) and not b.time_local:
            what = b.label or f"block {i} ({type(b).__name__})"
            raise ImportError_(
                f"{what} mixes time steps, so the model cannot advance one event at a time: "
                "import it with --mode window"
            )


def make_plan(conv: Converted, opts: ImportOptions, positive_column: int | None = None) -> Plan:
    shape = conv.input_shape
    has_rnn = bool(conv.recurrent)
    # The default follows the input: a fixed time axis means the model was trained on
    # windows of that length (window semantics); a None one means any length (stateful).
    fixed_time = len(shape) >= 3 and shape[1] is not None
    default = "window" if fixed_time and opts.kind != "sentiment" else "stateful"
    mode = opts.mode or (default if has_rnn or fixed_time else "stateless")
    if opts.kind == "classify":
        if opts.mode is not None:
            raise ImportError_("--mode applies to sequence models; classify is per frame")
        mode = "stateless"
    elif mode == "stateless" and not (opts.kind == "forecast" and len(shape) == 2):
        raise ImportError_(f"kind {opts.kind} needs --mode window or stateful")
    if mode == "stateful" and not has_rnn:
        raise ImportError_("--mode stateful needs a recurrent layer (SimpleRNN, LSTM, GRU)")
    if mode == "stateful":
        _check_stateful(conv)
    if opts.kind == "sentiment" and mode != "stateful":
        raise ImportError_("a sentiment model streams token chunks: use --mode stateful")
    # A 2-D input (samples, W) in window mode is W steps of one feature (the lag-vector
    # MLP of the forecasting tutorials); without --mode it is one event's F features.
    if mode == "window" and (len(shape) < 2 or shape[1] is None):
        raise ImportError_(f"--mode window needs a fixed window length; the input is {shape}")
    step_shape = shape[1:] if mode == "stateless" else shape[2:]
    if any(d is None for d in step_shape):
        raise ImportError_(f"input shape {shape}: only the time axis may be unknown")
    step_dims = tuple(int(d) for d in step_shape if d is not None)
    window = int(shape[1]) if mode == "window" and shape[1] is not None else 0
    adapter, inputs, pre = _adapter(opts, step_dims, conv, positive_column)
    outputs = _outputs(opts, conv)
    if mode == "window":
        outputs = (
            *outputs,
            OutputSpec("warming_up", "flag", description="1 until the window holds W events"),
        )
    states = _states(mode, conv, window, adapter)
    pre = {**pre, "semantics": mode, "source": "keras"}
    if window:
        pre["window"] = window
    spec = ModelSpec(
        name=opts.name,
        version=opts.version,
        kind=opts.kind,  # type: ignore[arg-type]
        inputs=inputs,
        outputs=outputs,
        states=states,
        preprocess=pre,
    )
    step: nn.Module
    if mode == "window":
        step = WindowStep(conv.chain, adapter, window, conv.sequence_output)
    elif mode == "stateless":
        step = StatelessStep(conv.chain, adapter)
    elif opts.kind == "sentiment":
        step = StatefulTokenStep(conv.chain, adapter, opts.chunk)
    else:
        step = StatefulFrameStep(conv.chain, adapter)
    fixed = int(shape[1]) if len(shape) > 2 and shape[1] is not None else 0
    sequence = conv.sequence_output or (mode == "stateful" and _stateful_sequence(conv))
    return Plan(mode, sequence, window, fixed, adapter, spec, step.eval())


def _stateful_sequence(conv: Converted) -> bool:
    """Stateful steps take the last time step after the last recurrent layer when it
    returns sequences (StatefulStep.run): the reference must do the same."""
    last = conv.recurrent[-1]
    return last.return_sequences


def _adapter(
    opts: ImportOptions,
    step_dims: tuple[int, ...],
    conv: Converted,
    positive_column: int | None = None,
) -> tuple[Adapter, tuple[TensorSpec, ...], dict[str, Any]]:
    pre: dict[str, Any] = {}
    if opts.kind == "forecast":
        nf = int(np.prod(step_dims))
        if step_dims not in ((nf,), ()):  # (): a 2-D window input, one feature per step
            raise ImportError_(
                f"a forecast step must be a feature vector, the model has {step_dims}"
            )
        if len(opts.features) != nf:
            raise ImportError_(f"the model takes {nf} features: --features must name {nf}")
        for what, vals, n in (
            ("--input-mean", opts.input_mean, nf),
            ("--input-std", opts.input_std, nf),
        ):
            if vals and len(vals) != n:
                raise ImportError_(f"{what} needs {n} values")
        if bool(opts.input_mean) != bool(opts.input_std):
            raise ImportError_("give --input-mean and --input-std together")
        if bool(opts.output_mean) != bool(opts.output_std):
            raise ImportError_("give --output-mean and --output-std together")
        pre["features"] = list(opts.features)
        if opts.input_mean:
            pre["normalisation"] = {"mean": list(opts.input_mean), "std": list(opts.input_std)}
        if opts.output_mean:
            pre["output_scaling"] = {"mean": list(opts.output_mean), "std": list(opts.output_std)}
        adapter = Adapter(
            step_dims, opts.input_mean, opts.input_std, opts.output_mean, opts.output_std
        )
        return adapter, (TensorSpec("x", "float32", (-1, nf)),), pre
    if opts.kind in ("classify", "video"):
        h, w, c = (*step_dims, 1)[:3] if len(step_dims) == 2 else ((*step_dims, 0, 0, 0))[:3]
        if len(step_dims) not in (2, 3) or c not in (1, 3):
            raise ImportError_(
                "a frame model takes grey images (H, W) or (H, W, 1), or colour ones "
                f"(H, W, 3); the model has {step_dims}"
            )
        # The worker's frames are channels first ([C, H, W], like its grey [1, H, W]).
        pre.update(height=h, width=w, channels=c, color="L" if c == 1 else "RGB")
        pre.update(pixel_range=[0, 255], pixel_scale=opts.pixel_scale)
        adapter = Adapter(step_dims, pixel_scale=opts.pixel_scale, channels_first=c > 1)
        return adapter, (TensorSpec("x", "float32", (-1, c, h, w)),), pre
    # sentiment: token ids; the tokenizer is the one the worker's text codec loads.
    if conv.input_dtype != "int64" and step_dims:
        raise ImportError_("a sentiment model takes token ids: Input(shape=(T,), dtype='int32')")
    if opts.tokenizer is None:
        raise ImportError_("--tokenizer is required for kind sentiment (the worker tokenizes)")
    pre.update(max_chunk_tokens=opts.chunk, pad_id=0, max_text_chars=20_000)
    inputs = (TensorSpec("x", "int64", (-1, -1)), TensorSpec("lengths", "int64", (-1,)))
    if positive_column is not None:
        pre["positive_column"] = positive_column
    return Adapter(step_dims, select=positive_column), inputs, pre


def _outputs(opts: ImportOptions, conv: Converted) -> tuple[OutputSpec, ...]:
    if opts.kind in ("classify", "video"):
        classes = opts.classes
        return (
            OutputSpec("probs", "probability", classes, "P(class) from the model's last layer"),
        )
    if opts.kind == "sentiment":
        return (OutputSpec("positive", "probability", (), "P(positive) of the text so far"),)
    return (OutputSpec("prediction", "", opts.targets, "the Keras model's output, real units"),)


def _states(mode: str, conv: Converted, window: int, adapter: Adapter) -> tuple[StateSpec, ...]:
    if mode == "window":
        per_step = int(np.prod(adapter.step_shape))
        return (StateSpec("window", 1, window * per_step), StateSpec("count", 1, 1))
    if mode == "stateless":
        return ()
    states: list[StateSpec] = []
    for i, rec in enumerate(conv.recurrent):
        states += [StateSpec(f"{n}{i}", 1, rec.units) for n in rec.state_names]
    return tuple(states)


# --- the whole import ---------------------------------------------------------------


def import_keras(
    source: Path,
    opts: ImportOptions,
    out_dir: Path,
    manifest: Path = DEFAULT_MANIFEST,
    root: Path | None = None,
    sample: Array | None = None,
) -> ImportResult:
    """Import ``source``; writes ``out_dir/<name>.onnx`` and its manifest entry.

    Runs on one torch thread: the models are small, and extra intra-op threads only add
    synchronisation (on a loaded machine a tiny matmul took 45 ms with two threads).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _import_keras(source, opts, out_dir, manifest, root, sample)
    finally:
        torch.set_num_threads(threads)


def _import_keras(
    source: Path,
    opts: ImportOptions,
    out_dir: Path,
    manifest: Path = DEFAULT_MANIFEST,
    root: Path | None = None,
    sample: Array | None = None,
) -> ImportResult:
    """Import ``source``; writes ``out_dir/<name>.onnx`` and its manifest entry."""
    from statecast.export.keras import reference as ref

    if opts.kind not in KINDS:
        raise ImportError_(f"--kind must be one of {KINDS}")
    root = root or manifest.resolve().parent.parent
    started = time.perf_counter()
    model = load_keras(source)
    try:
        conv = convert_model(model)
    except UnsupportedLayer as exc:
        raise ImportError_(str(exc)) from exc
    plan = make_plan(conv, opts)
    predict = keras_predict(model)
    rng = np.random.default_rng(opts.seed)
    references = [ref.build(plan, predict, rng, None, opts)]
    if opts.kind == "sentiment":
        width = int(references[0].expected[-1]["positive"].shape[-1])
        if width == 2:
            # A two-class softmax head (labels 0 negative, 1 positive): serve column 1,
            # which is model.predict(...)[:, 1].
            plan = make_plan(conv, opts, positive_column=1)
            references = [ref.build(plan, predict, np.random.default_rng(opts.seed), None, opts)]
        elif width != 1:
            raise ImportError_(
                f"a sentiment model ends in 1 unit (P(positive)) or 2 (a softmax over "
                f"negative, positive); this one has {width}"
            )
    if sample is not None:
        references.append(ref.build(plan, predict, rng, sample, opts))
    if opts.kind in ("classify", "video"):
        last = next(e for e in reversed(references[0].expected) if e)
        n_out = int(last["probs"].shape[-1])
        if opts.classes and len(opts.classes) != n_out:
            raise ImportError_(
                f"--classes names {len(opts.classes)} classes, the model has {n_out}"
            )
        if not opts.classes:
            plan = make_plan(conv, _with_classes(opts, n_out))
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{opts.name}.onnx"
    ref_path = out_dir / f"{opts.name}.parity.npz"
    tok_path = out_dir / f"{opts.name}.tokenizer.json"
    written = [onnx_path, ref_path, tok_path]
    try:
        spec = plan.spec
        if opts.tokenizer is not None:
            shutil.copyfile(opts.tokenizer, tok_path)
            spec = _with_tokenizer(spec, tok_path)
        export_step_model(
            plan.step,
            spec,
            onnx_path,
            inputs=ref.example_inputs(plan, spec),
            doc=f"imported from {source.name}",
        )
        diffs = [step_parity(onnx_path, r.steps, r.expected) for r in references]
        for what, d in zip(("random", "real"), diffs, strict=False):
            if not d <= PARITY_TOLERANCE:
                raise ParityError(
                    f"{opts.name}: parity with keras on {what} inputs "
                    f"{d:.3g} > {PARITY_TOLERANCE:g}"
                )
        save_reference(ref_path, references)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "source": "keras",
        "source_file": source.name,
        "source_sha256": sha256_file(source),
        "semantics": plan.mode,
        "parity_max_abs_diff": float(f"{max(diffs):.3g}"),
        "parity_random": float(f"{diffs[0]:.3g}"),
        "import_seconds": round(seconds, 2),
    }
    if len(diffs) > 1:
        metrics["parity_real"] = float(f"{diffs[1]:.3g}")
    artefacts = {"parity_reference": _artefact(ref_path, root)}
    if opts.tokenizer is not None:
        artefacts["tokenizer"] = _artefact(tok_path, root)
    entry = ManifestEntry(
        name=spec.name,
        version=spec.version,
        kind=spec.kind,
        onnx=onnx_path.resolve().relative_to(root.resolve()).as_posix(),
        sha256=sha256_file(onnx_path),
        metrics=metrics,
        artefacts=artefacts,
    )
    upsert_entry(entry, manifest)
    log.info("imported %s: %s, parity %.3g, %.1f s", source, plan.mode, max(diffs), seconds)
    return ImportResult(
        entry=entry,
        spec=spec,
        onnx_path=onnx_path,
        parity_random=diffs[0],
        parity_real=diffs[1] if len(diffs) > 1 else None,
        seconds=seconds,
        metrics=metrics,
    )


def _artefact(path: Path, root: Path) -> Artefact:
    return Artefact(
        path=path.resolve().relative_to(root.resolve()).as_posix(), sha256=sha256_file(path)
    )


def _with_classes(opts: ImportOptions, n: int) -> ImportOptions:
    from dataclasses import replace

    return replace(opts, classes=tuple(str(i) for i in range(n)))


def _with_tokenizer(spec: ModelSpec, tok_path: Path) -> ModelSpec:
    from dataclasses import replace

    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    pre = {
        **spec.preprocess,
        "tokenizer": tok_path.name,  # relative to the ONNX file's directory
        "tokenizer_sha256": sha256_file(tok_path),
        "vocab_size": vocab,
    }
    return replace(spec, preprocess=pre)


def parse_floats(text: str | None) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",")) if text else ()


def parse_names(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip()) if text else ()


def summary(result: ImportResult) -> Sequence[str]:
    s = result.spec
    lines = [
        f"imported {s.ref} ({s.kind}, {result.metrics['semantics']}) -> {result.onnx_path}",
        f"  state: {', '.join(f'{st.name}[{st.layers}x{st.hidden}]' for st in s.states) or 'none'}",
        f"  parity vs keras: random {result.parity_random:.3g}"
        + (f", real {result.parity_real:.3g}" if result.parity_real is not None else ""),
        f"  import took {result.seconds:.1f} s; sha256 {result.entry.sha256[:12]}",
    ]
    return lines
