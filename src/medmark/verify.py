"""Black-box ownership verification of a suspect model (docs/methods/verification.md: Tests, Metrics).

The verifier queries the suspect only through :class:`BlackBox` with ``m`` benign verification
images ``x`` (non-target class, disjoint patients) and their watermarked versions ``x'``, then
decides whether the suspect was trained on the protected release (Li et al., "Black-box Dataset
Ownership Verification via Backdoor Watermarking", TIFS 2023, as extended by X-Mark).

- Probability-available (default): one-sided paired t-test on ``P(y_t | .)``,
  H1: ``mean(P(y_t|x') - P(y_t|x)) > tau`` (:func:`paired_ttest`).
- Hard-label: Tango's score statistic for the paired difference of target-label rates with
  margin ``tau``, exact unconditional p-value (:func:`hard_label_test`); the DVBW-style
  Wilcoxon reading is reported beside it, never decides.
- Key-specific test (ours, docs/methods/verification.md "Key-specific test"): the owner's mark
  against ``K`` decoy marks made by the same generator with verification-only keys, on the same
  images and the same suspect: one-sided paired t-test on
  ``d_i = P(y_t|x'_i) - mean_k P(y_t|x'^(k)_i)``, H1: ``mean(d) > key_tau``
  (:func:`key_specific_test`). A model that learned "this family of marks means y_t" but not the
  owner's key answers the decoys as strongly and fails it.
- Verdict: "detected" iff the tau-margin test **and** the key-specific test reject at ``alpha``
  (an intersection-union test, level ``alpha``); without decoys, the tau-margin test alone.
- Metrics: WSR, ΔP, ΔP of the decoys, benign accuracy and AUROC on clean test images.

Degenerate inputs are verdicts, not crashes: they come back with a ``flag`` and
``significant=False`` (constant differences: the exact sign test decides, see
:func:`paired_ttest`).

JSON convention (:func:`json_safe`): NaN becomes ``null`` and ``±inf`` the strings ``"inf"`` /
``"-inf"``; the ``flags`` list of the summary says why a value is undefined or infinite.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from scipy import special, stats

from medmark.errors import DataFormatError
from medmark.train import resize_batch

log = logging.getLogger(__name__)

OutputKind = Literal["probs", "logits"]
OUTPUT_KINDS: tuple[str, ...] = ("probs", "logits")
PROB_SUM_TOL = 1e-3
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
LN10 = math.log(10.0)
INPUT_CONTRACT = "float32 images of shape (N, 1, H, W) with values in [0, 1]"

# flags (stable strings: reports filter on them)
FLAG_NAN_IDENTICAL = "nan_identical_samples"
FLAG_CONSTANT = "constant_differences"
FLAG_ALL_ZERO = "all_zero_differences"
FLAG_AUROC_SINGLE_CLASS = "auroc_undefined_single_class"
FLAG_AUROC_HARD_LABEL = "auroc_unavailable_hard_label"
FLAG_NO_TEST = "no_test_images"
FLAG_TEST_IGNORED = "test_labels_ignored_rows"
FLAG_NO_DECOYS = "no_decoys_key_test_skipped"
FLAG_KEY_TEST_HARD_LABEL = "key_test_unavailable_hard_label"


# --------------------------------------------------------------------------- black boxes


@runtime_checkable
class BlackBox(Protocol):
    """What the verifier may do with a suspect: query it (docs/methods/verification.md: Roles)."""

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """``(N, K)`` class probabilities for float32 ``(N, 1, H, W)`` images in ``[0, 1]``."""
        ...

    def predict_label(self, images: np.ndarray) -> np.ndarray:
        """``(N,)`` predicted class indices (the hard-label API)."""
        ...


def check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """Validate and return float32 ``(N, 1, H, W)`` images in ``[0, 1]`` (the black-box API)."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[0] < 1:
        raise DataFormatError(f"expected {INPUT_CONTRACT}, got shape {arr.shape}", field=name)
    if arr.dtype != np.float32:
        raise DataFormatError(f"expected {INPUT_CONTRACT}, got dtype {arr.dtype}", field=name)
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise DataFormatError(
            f"expected {INPUT_CONTRACT}, got values in [{np.nanmin(arr):.4g}, "
            f"{np.nanmax(arr):.4g}] (non-finite present: {not np.all(np.isfinite(arr))})",
            field=name,
        )
    return np.ascontiguousarray(arr)


def softmax_np(z: np.ndarray) -> np.ndarray:
    """Row-wise, numerically stable softmax in float64."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def outputs_to_proba(
    raw: np.ndarray, n: int, output: OutputKind, source: str | None = None
) -> np.ndarray:
    """Check a model's raw output and return ``(N, K)`` float64 probabilities.

    ``output="probs"``: rows must lie in ``[0, 1]`` and sum to ``1 ± 1e-3`` (else an error that
    says so and suggests ``--output logits``). ``output="logits"``: softmax is applied; rows that
    all already look like probabilities are refused (a second softmax halves ΔP).
    """
    arr = np.asarray(raw)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 2:
        raise DataFormatError(
            f"model output has shape {arr.shape}; expected (N, K) = ({n}, K >= 2): one row of "
            "class probabilities (or logits with --output logits) per input image",
            file=source,
            field="output",
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise DataFormatError(
            f"model output of shape {arr.shape} contains NaN or inf", file=source, field="output"
        )
    sums = arr.sum(axis=1)
    looks_like_probs = (
        arr.min() >= 0.0 and arr.max() <= 1.0 and bool(np.all(np.abs(sums - 1.0) <= PROB_SUM_TOL))
    )
    if output == "logits":
        if looks_like_probs:
            raise DataFormatError(
                f"outputs were declared logits (--output logits) but every row of the "
                f"{arr.shape} output already is a probability vector (values in [0, 1], rows "
                f"summing to 1 ± {PROB_SUM_TOL:g}); a second softmax would shrink ΔP. Drop "
                "--output logits (the default, probs, is right for this model)",
                file=source,
                field="output",
            )
        return softmax_np(arr)
    if output != "probs":
        raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
    if not looks_like_probs:
        raise DataFormatError(
            f"model output of shape {arr.shape} does not look like probabilities: values in "
            f"[{arr.min():.4g}, {arr.max():.4g}], row sums in [{sums.min():.4g}, "
            f"{sums.max():.4g}]; expected every row in [0, 1] summing to 1 ± {PROB_SUM_TOL:g}. "
            "If the model returns logits, pass --output logits (softmax is then applied)",
            file=source,
            field="output",
        )
    return arr


CHANNELS = (1, 3)
_CHANNELS_TORCH = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels")
_CHANNELS_ORT = re.compile(r"index: 1 Got: \d+ Expected: (\d+)")


def short_error(e: BaseException, limit: int = 300) -> str:
    """One line of an exception: the last non-empty line (TorchScript puts its trace first)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def expected_channels(message: str, declared: int | None = None) -> int | None:
    """The input channel count a model asked for, from its error message or declared shape."""
    for pattern in (_CHANNELS_TORCH, _CHANNELS_ORT):
        m = pattern.search(message)
        if m:
            return int(m.group(1))
    return declared


def check_model_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if it is a regular file, else a DataFormatError saying what it is."""
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(
            "is a directory; --model takes a model file (TorchScript .pt/.pth or ONNX .onnx)",
            file=str(path),
        )
    if not path.exists():
        raise DataFormatError("model file not found", file=str(path))
    if not path.is_file():
        raise DataFormatError("not a regular file", file=str(path))
    return path


class _BatchedBlackBox:
    """Shared batching, input checks and output checks of the adapters."""

    def __init__(
        self,
        *,
        source: str,
        batch_size: int,
        input_resolution: int | None,
        output: OutputKind,
        channels: int = 1,
    ) -> None:
        if channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if input_resolution is not None and input_resolution < 1:
            raise ValueError(f"input_resolution must be >= 1, got {input_resolution}")
        if output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
        self.source = source
        self.batch_size = int(batch_size)
        self.input_resolution = input_resolution
        self.output: OutputKind = output
        self.channels = channels

    def _model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """Resize (``input_resolution``) and repeat the grey channel (``channels == 3``)."""
        x = resize_batch(batch, self.input_resolution)
        return x.repeat(1, 3, 1, 1) if self.channels == 3 else x

    def _raw(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _expected_input(self) -> str:
        return ""

    def _declared_channels(self) -> int | None:
        return None

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x = check_images(images)
        out = []
        for i in range(0, len(x), self.batch_size):
            batch = x[i : i + self.batch_size]
            try:
                raw = self._raw(batch)
            except (MemoryError, torch.OutOfMemoryError, DataFormatError):
                raise
            except Exception as e:
                r = self.input_resolution
                h, w = batch.shape[2:] if r is None else (r, r)
                fed = (len(batch), self.channels, h, w)
                detail = short_error(e)
                want = expected_channels(detail, self._declared_channels())
                if want is not None and want != self.channels:
                    hint = (
                        f"the model expects {want}-channel input, medmark fed {self.channels} "
                        "(grey)"
                        + ("; pass --channels 3 to repeat the grey channel" if want == 3 else "")
                    )
                else:
                    hint = (
                        f"medmark feeds every model {INPUT_CONTRACT}{self._expected_input()}; "
                        "if the model needs another input size pass --input-resolution"
                    )
                raise DataFormatError(
                    f"the model raised {type(e).__name__} ({detail}) when fed a batch of shape "
                    f"{fed}: {hint}",
                    file=self.source,
                    field="input",
                ) from e
            out.append(outputs_to_proba(raw, len(batch), self.output, self.source))
        return np.concatenate(out, axis=0)

    def predict_label(self, images: np.ndarray) -> np.ndarray:
        return np.argmax(self.predict_proba(images), axis=1).astype(np.int64)


class TorchBlackBox(_BatchedBlackBox):
    """A torch module as a black box (eval mode, no_grad, softmax of its logits).

    The project's models return 2-way logits, hence ``output="logits"`` by default. The module
    is moved to ``device`` and put in eval mode (in place).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        input_resolution: int | None = None,
        output: OutputKind = "logits",
        source: str = "torch model",
        channels: int = 1,
    ) -> None:
        super().__init__(
            source=source,
            batch_size=batch_size,
            input_resolution=input_resolution,
            output=output,
            channels=channels,
        )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def _raw(self, batch: np.ndarray) -> np.ndarray:
        x = self._model_input(torch.from_numpy(batch).to(self.device))
        y = self.model(x)
        if not isinstance(y, torch.Tensor):
            raise DataFormatError(
                f"model returned {type(y).__name__}; expected one tensor of shape (N, K)",
                file=self.source,
                field="output",
            )
        return y.detach().float().cpu().numpy()


class TorchScriptBlackBox(TorchBlackBox):
    """A TorchScript archive (``torch.jit.save``) as a black box."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        input_resolution: int | None = None,
        output: OutputKind = "probs",
        channels: int = 1,
    ) -> None:
        path = check_model_file(path)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated")
                model = torch.jit.load(str(path), map_location=torch.device(device))
        except Exception as e:
            raise DataFormatError(
                f"not a TorchScript archive (torch.jit.load: {e}); save the model with "
                "torch.jit.script(model).save(path) or export it to ONNX (.onnx)",
                file=str(path),
            ) from e
        super().__init__(
            model,
            device=device,
            batch_size=batch_size,
            input_resolution=input_resolution,
            output=output,
            source=str(path),
            channels=channels,
        )


class OnnxBlackBox(_BatchedBlackBox):
    """An ONNX model run by onnxruntime on CPU (``CPUExecutionProvider``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        batch_size: int = 64,
        input_resolution: int | None = None,
        output: OutputKind = "probs",
        threads: int | None = None,
        channels: int = 1,
    ) -> None:
        import onnxruntime as ort

        path = check_model_file(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise DataFormatError(f"not a loadable ONNX model ({e})", file=str(path)) from e
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DataFormatError(
                f"ONNX model has {len(inputs)} inputs {[i.name for i in inputs]}; expected one "
                f"image input taking {INPUT_CONTRACT}",
                file=str(path),
                field="input",
            )
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        super().__init__(
            source=str(path),
            batch_size=batch_size,
            input_resolution=input_resolution,
            output=output,
            channels=channels,
        )

    def _expected_input(self) -> str:
        return f" (this ONNX model declares input {self.input_name!r} of shape {self.input_shape})"

    def _declared_channels(self) -> int | None:
        c = self.input_shape[1] if len(self.input_shape) == 4 else None
        return c if isinstance(c, int) else None

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        x = self._model_input(torch.from_numpy(batch)).numpy()
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]


MODEL_SUFFIXES: dict[str, str] = {".pt": "torchscript", ".pth": "torchscript", ".onnx": "onnx"}


def load_blackbox(
    path: str | os.PathLike[str],
    kind: str = "auto",
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    input_resolution: int | None = None,
    output: OutputKind = "probs",
    channels: int = 1,
) -> BlackBox:
    """Open a suspect file as a black box; ``kind="auto"`` picks by extension.

    ``.pt``/``.pth`` → TorchScript (``torch.jit.load``), ``.onnx`` → onnxruntime (CPU only).
    ``channels=3`` repeats the grey channel for models that take RGB input.
    """
    path = Path(path)
    if kind == "auto":
        kind = MODEL_SUFFIXES.get(path.suffix.lower(), "")
        if not kind:
            raise DataFormatError(
                f"cannot tell the model format from the extension {path.suffix!r}; expected "
                f"one of {sorted(MODEL_SUFFIXES)} (TorchScript or ONNX)",
                file=str(path),
            )
    if kind == "torchscript":
        return TorchScriptBlackBox(
            path,
            device=device,
            batch_size=batch_size,
            input_resolution=input_resolution,
            output=output,
            channels=channels,
        )
    if kind == "onnx":
        if torch.device(device).type != "cpu":
            raise DataFormatError(
                f"ONNX models run on CPU (onnxruntime CPUExecutionProvider); device {device} "
                "was requested",
                file=str(path),
            )
        return OnnxBlackBox(
            path,
            batch_size=batch_size,
            input_resolution=input_resolution,
            output=output,
            channels=channels,
        )
    raise ValueError(f"kind must be auto, torchscript or onnx, got {kind!r}")


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class TestResult:
    """One hypothesis test; ``p_value``/``statistic`` are NaN when undefined (see ``flag``)."""

    __test__ = False  # not a pytest class

    test: str
    statistic: float
    p_value: float
    log10_p: float
    df: float | None
    significant: bool
    flag: str | None
    n: int
    mean_diff: float
    tau: float
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_pair(a: Any, b: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must be 1-D of equal length, got {x.shape} and {y.shape}"
        )
    if len(x) < 2:
        raise ValueError(f"a paired test needs at least 2 pairs, got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{names[0]} / {names[1]} contain NaN or inf")
    return x, y


def _check_tau_alpha(tau: float, alpha: float) -> None:
    if not (math.isfinite(tau) and 0.0 <= tau < 1.0):
        raise ValueError(f"tau must be in [0, 1), got {tau}")
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")


def _undefined(test: str, flag: str, common: Mapping[str, Any]) -> TestResult:
    """A test whose statistic is undefined: NaN statistic and p, not significant, ``flag``."""
    nan = float("nan")
    return TestResult(
        test=test, statistic=nan, p_value=nan, log10_p=nan, significant=False, flag=flag, **common
    )


def t_log10_sf(stat: float, df: float) -> float:
    """``log10 P(T > stat)`` for Student's t with ``df`` degrees of freedom, without underflow.

    ``scipy.stats.t.logsf`` is used where it is finite; it underflows to ``-inf`` once the tail
    is below ~1e-308 (``stat`` > ~60 for ``df`` = 1000), and there the tail comes from
    ``sf = I_x(df/2, 1/2) / 2`` with ``x = df / (df + stat²)`` and
    ``I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) · 2F1(a + b, 1; a + 1; x)`` (DLMF 8.17.8),
    evaluated in log space.
    """
    if math.isnan(stat):
        return float("nan")
    if math.isinf(stat):
        return -math.inf if stat > 0 else 0.0
    lv = float(stats.t.logsf(stat, df))
    if math.isfinite(lv) or stat <= 0:
        return lv / LN10
    a, b = df / 2.0, 0.5
    x = df / (df + stat * stat)
    if x <= 0.0:
        return -math.inf
    log_sf = (
        math.log(0.5)
        + a * math.log(x)
        + b * math.log1p(-x)
        - math.log(a)
        - float(special.betaln(a, b))
        + math.log(float(special.hyp2f1(a + b, 1.0, a + 1.0, x)))
    )
    return log_sf / LN10


def paired_ttest(
    p_wm: Sequence[float] | np.ndarray,
    p_clean: Sequence[float] | np.ndarray,
    tau: float,
    alpha: float,
) -> TestResult:
    """One-sided paired t-test, H1: ``mean(p_wm - p_clean) > tau`` (DVBW; docs/methods/verification.md: Tests).

    Computed as ``scipy.stats.ttest_rel(p_wm, p_clean + tau, alternative="greater")``;
    ``log10_p`` (:func:`t_log10_sf`, from ``t.logsf``) stays finite where ``p`` underflows to 0.
    Degenerate inputs (differences ``e = p_wm - (p_clean + tau)`` constant to within 16 ulp of
    the data's scale, where the t statistic is undefined and scipy's result is rounding noise):

    - all ``e == 0`` → ``p_value``/``statistic`` NaN, not significant, flag
      ``nan_identical_samples``;
    - constant ``e != 0`` (e.g. a saturated model) → flag ``constant_differences`` and the exact
      one-sided sign test of the same hypothesis instead of the t-test (``test="exact_sign"``,
      ``statistic`` = number of differences above ``tau``): ``p = 2^-m`` when every difference
      exceeds ``tau`` (so ``log10_p = -m log10 2`` stays finite), ``p = 1`` when every one is
      below; the verdict is ``p < alpha`` as for any other input (``m >= 7`` pairs are needed
      to reach ``alpha = 0.01``).
    """
    _check_tau_alpha(tau, alpha)
    a, b = _check_pair(p_wm, p_clean, ("p_wm", "p_clean"))
    shifted = b + tau
    e = a - shifted
    n = len(a)
    df = float(n - 1)
    mean_diff = float(np.mean(a - b))
    scale = max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(shifted))))
    tol = 16.0 * np.finfo(np.float64).eps * scale
    common = dict(n=n, mean_diff=mean_diff, tau=tau, alpha=alpha)
    if float(np.ptp(e)) <= tol:
        c = float(np.mean(e))
        if abs(c) <= tol:
            nan = float("nan")
            return TestResult(
                test="paired_t",
                statistic=nan,
                p_value=nan,
                log10_p=nan,
                df=df,
                significant=False,
                flag=FLAG_NAN_IDENTICAL,
                **common,
            )
        up = c > 0
        log10_p = -n * math.log10(2.0) if up else 0.0
        p = math.ldexp(1.0, -n) if up else 1.0
        return TestResult(
            test="exact_sign",
            statistic=float(n if up else 0),
            p_value=p,
            log10_p=log10_p,
            df=None,
            significant=bool(p < alpha),
            flag=FLAG_CONSTANT,
            **common,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(a, shifted, alternative="greater")
    stat = float(res.statistic)
    p = float(res.pvalue)
    return TestResult(
        statistic=stat,
        p_value=p,
        log10_p=t_log10_sf(stat, df),
        significant=bool(p < alpha),
        flag=None,
        test="paired_t",
        df=df,
        **common,
    )


def key_specific_test(
    p_owner: Sequence[float] | np.ndarray,
    p_decoys: np.ndarray,
    key_tau: float,
    alpha: float,
) -> TestResult:
    """Owner's mark vs ``K`` decoy marks on the same images: H1 ``mean(d) > key_tau`` with
    ``d_i = p_owner_i - mean_k p_decoys[k, i]`` (one-sided paired t-test, :func:`paired_ttest`
    on ``(p_owner, mean_k p_decoys)``, so degenerate inputs follow its rules).

    Under H0 for a model that never learned the owner's key, the owner's key is exchangeable with
    the decoys (all are fresh draws of the same carrier family), so ``E[d] = 0 <= key_tau``.
    """
    dec = np.asarray(p_decoys, dtype=np.float64)
    own = np.asarray(p_owner, dtype=np.float64)
    if dec.ndim != 2 or dec.shape[1] != own.shape[0] or dec.shape[0] < 1:
        raise ValueError(f"p_decoys must be (K >= 1, {own.shape[0]}), got {dec.shape}")
    res = paired_ttest(own, dec.mean(axis=0), key_tau, alpha)
    return TestResult(**{**res.to_dict(), "test": f"key_contrast_{res.test}"})


def untargeted_test(
    p_true_clean: Sequence[float] | np.ndarray,
    p_true_wm: Sequence[float] | np.ndarray,
    tau: float,
    alpha: float,
) -> TestResult:
    """UBW's dispersibility test (Li et al., "Untargeted Backdoor Watermark", NeurIPS 2022, §3.4):
    with ``P_b = f(x)_y`` and ``P_p = f(x')_y`` the suspect's probability of each verification
    image's *ground-truth* label on the benign and the watermarked image, one-sided paired
    t-test of H0: ``mean(P_b - P_p) <= tau`` against H1: ``mean(P_b - P_p) > tau`` (a model
    trained on the untargeted watermark moves marked images away from their true class, to
    no class in particular). Computed as :func:`paired_ttest` on ``(P_b, P_p)`` (same degenerate
    cases); ``test`` is prefixed ``untargeted_``.
    """
    res = paired_ttest(p_true_clean, p_true_wm, tau, alpha)
    return TestResult(**{**res.to_dict(), "test": f"untargeted_{res.test}"})


def dispersibility(
    pred_clean: Sequence[int] | np.ndarray, pred_wm: Sequence[int] | np.ndarray
) -> float:
    """Share of verification images whose predicted label changes when marked (UBW §3.3, the
    hard-label reading of the untargeted watermark's effect)."""
    a, b = np.asarray(pred_clean), np.asarray(pred_wm)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"predictions must be 1-D of equal, non-zero length: {a.shape} {b.shape}")
    return float(np.mean(a != b))


@dataclass(frozen=True)
class HardLabelResult:
    """Hard-label tests; :attr:`primary` (the margin score test) decides the verdict.

    ``dvbw_wilcoxon`` is the DVBW-style reading (Wilcoxon signed-rank on ``tau``-shifted 0/±1
    differences), reported for comparison only: its size is wrong (docs/methods/verification.md).
    """

    margin_test: TestResult
    dvbw_wilcoxon: TestResult
    rate_wm: float
    rate_clean: float
    discordant_up: int  # b = #{f(x') = y_t, f(x) != y_t}
    discordant_down: int  # c = #{f(x') != y_t, f(x) = y_t}

    @property
    def primary(self) -> TestResult:
        return self.margin_test


NUISANCE_GRID = 400  # grid points over the nuisance p01 for the exact unconditional p-value


def tango_score(b: Any, c: Any, m: int, tau: float) -> np.ndarray:
    """Tango's score statistic for ``H0: p10 - p01 <= tau`` on paired binary outcomes.

    ``b`` = #(1, 0) pairs (target on ``x'`` only), ``c`` = #(0, 1) pairs, ``m`` pairs, ``p10 -
    p01`` = difference of the two target rates. ``Z = (b - c - m tau) / sqrt(m (2 q + tau (1 -
    tau)))`` with ``q`` the maximum-likelihood ``p01`` under ``p10 = p01 + tau`` (root of
    ``2m q^2 + (-b - c + (2m - b + c) tau) q - c tau (1 - tau) = 0``); Tango, Stat. Med. 17
    (1998) 891-908; Nam, Biometrics 53 (1997) 1422-1430. ``tau = 0`` gives McNemar's score
    statistic ``(b - c) / sqrt(b + c)`` (NaN when ``b = c = 0``). Vectorised over ``b``, ``c``.
    """
    b = np.asarray(b, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    qa = 2.0 * m
    qb = -b - c + (2.0 * m - b + c) * tau
    qc = -c * tau * (1.0 - tau)
    q = (-qb + np.sqrt(np.maximum(qb * qb - 4.0 * qa * qc, 0.0))) / (2.0 * qa)
    var = m * (2.0 * q + tau * (1.0 - tau))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (b - c - m * tau) / np.sqrt(var)


def _exact_unconditional_log_p(b: int, c: int, m: int, tau: float) -> float:
    """``log sup_q P_q(Z >= z_obs)`` over the null boundary ``p10 = q + tau, p01 = q``.

    The trinomial ``(b, c, m - b - c)`` is enumerated; ``q`` runs over ``NUISANCE_GRID`` points
    of ``[0, (1 - tau) / 2]`` plus the observed constrained MLE. Under H0 the rejection rate of
    ``p < alpha`` is at most ``alpha`` (up to the grid), whatever ``q``: the asymptotic normal
    p of the same statistic is liberal for small ``p01`` (up to 2x at m = 100).
    """
    z_obs = float(tango_score(b, c, m, tau))
    bb, cc = np.meshgrid(np.arange(m + 1), np.arange(m + 1), indexing="ij")
    valid = bb + cc <= m
    bb, cc = bb[valid], cc[valid]
    z = tango_score(bb, cc, m, tau)
    # ties within rounding count as "at least as extreme"
    extreme = np.nan_to_num(z, nan=-np.inf) >= z_obs - 1e-9 * max(1.0, abs(z_obs))
    bb, cc = bb[extreme], cc[extreme]
    rest = m - bb - cc
    log_coef = (
        special.gammaln(m + 1.0)
        - special.gammaln(bb + 1.0)
        - special.gammaln(cc + 1.0)
        - special.gammaln(rest + 1.0)
    )
    hi = (1.0 - tau) / 2.0
    qa, qb_, qc = 2.0 * m, -b - c + (2.0 * m - b + c) * tau, -c * tau * (1.0 - tau)
    q_hat = (-qb_ + math.sqrt(max(qb_ * qb_ - 4.0 * qa * qc, 0.0))) / (2.0 * qa)
    grid = np.unique(np.concatenate([np.linspace(0.0, hi, NUISANCE_GRID), [q_hat]]))
    best = -math.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        for chunk in np.array_split(grid, max(1, len(grid) * len(bb) // 2_000_000 + 1)):
            q = chunk[None, :]
            p10, p01, p00 = q + tau, q, 1.0 - 2.0 * q - tau
            lp = (
                log_coef[:, None]
                + special.xlogy(bb[:, None], p10)
                + special.xlogy(cc[:, None], p01)
                + special.xlogy(rest[:, None], np.maximum(p00, 0.0))
            )
            best = max(best, float(np.max(special.logsumexp(lp, axis=0))))
    return min(best, 0.0)


def hard_label_test(
    pred_wm: Sequence[int] | np.ndarray,
    pred_clean: Sequence[int] | np.ndarray,
    target_class: int,
    tau: float,
    alpha: float,
) -> HardLabelResult:
    """Hard-label verification: paired target-rate difference with margin ``tau``.

    With ``u_i = 1[f(x'_i) = y_t]`` and ``v_i = 1[f(x_i) = y_t]``, H0: ``P(u) - P(v) <= tau``,
    H1: ``P(u) - P(v) > tau`` (the probability-mode hypothesis on hard labels). Statistic:
    Tango's score :func:`tango_score` from the discordant counts ``b = #(u=1, v=0)`` and
    ``c = #(u=0, v=1)``; p-value: exact unconditional, the supremum over the nuisance ``p01``
    of the null probability of a statistic at least as large
    (:func:`_exact_unconditional_log_p`), so the size is at most ``alpha`` at every point of
    the null boundary (checked by simulation in ``tests/test_verify_stats.py``). For
    ``tau = 0`` this is the exact unconditional McNemar test; ``b = c = 0`` then gives NaN,
    not significant, flag ``all_zero_differences``.

    Also reported (never decides): the DVBW-style Wilcoxon signed-rank reading on
    ``u - v - tau`` (docs/methods/verification.md explains why its size is wrong).
    """
    _check_tau_alpha(tau, alpha)
    a, bv = _check_pair(pred_wm, pred_clean, ("pred_wm", "pred_clean"))
    m = len(a)
    u = a == target_class
    v = bv == target_class
    b = int(np.sum(u & ~v))
    c = int(np.sum(~u & v))
    rate_wm, rate_clean = float(u.mean()), float(v.mean())
    mean_diff = rate_wm - rate_clean
    common = dict(n=m, mean_diff=mean_diff, tau=tau, alpha=alpha, df=None)
    z = float(tango_score(b, c, m, tau))
    if math.isnan(z):
        main = _undefined("paired_margin_score_exact", FLAG_ALL_ZERO, common)
    else:
        log_p = _exact_unconditional_log_p(b, c, m, tau)
        p = math.exp(log_p)
        main = TestResult(
            test="paired_margin_score_exact",
            statistic=z,
            p_value=p,
            log10_p=log_p / LN10,
            significant=bool(p < alpha),
            flag=None,
            **common,
        )
    d = u.astype(np.float64) - v.astype(np.float64) - tau
    if np.all(d == 0.0):
        wil = _undefined("dvbw_wilcoxon_signed_rank", FLAG_ALL_ZERO, common)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.wilcoxon(d, zero_method="wilcox", alternative="greater")
        wp = float(res.pvalue)
        wil = TestResult(
            test="dvbw_wilcoxon_signed_rank",
            statistic=float(res.statistic),
            p_value=wp,
            log10_p=math.log10(wp) if wp > 0.0 else -math.inf,
            significant=bool(wp < alpha),
            flag=None,
            **common,
        )
    return HardLabelResult(
        margin_test=main,
        dvbw_wilcoxon=wil,
        rate_wm=rate_wm,
        rate_clean=rate_clean,
        discordant_up=b,
        discordant_down=c,
    )


# --------------------------------------------------------------------------- metrics


def wsr(
    pred_labels_wm: Sequence[int] | np.ndarray,
    target_class: int,
    true_labels: Sequence[int] | np.ndarray | None = None,
) -> float:
    """Watermark success rate: fraction of watermarked non-target images predicted ``y_t``.

    Verification images are non-target by construction; pass ``true_labels`` to restrict the
    rate to the non-target rows of another set.
    """
    pred = np.asarray(pred_labels_wm)
    if pred.ndim != 1:
        raise ValueError(f"pred_labels_wm must be 1-D, got shape {pred.shape}")
    if true_labels is not None:
        true = np.asarray(true_labels)
        if true.shape != pred.shape:
            raise ValueError(f"true_labels shape {true.shape} != predictions {pred.shape}")
        pred = pred[true != target_class]
    if len(pred) == 0:
        raise ValueError("WSR needs at least one watermarked non-target image")
    return float(np.mean(pred == target_class))


def delta_p(p_wm: Sequence[float] | np.ndarray, p_clean: Sequence[float] | np.ndarray) -> float:
    """ΔP = mean(P(y_t | x') − P(y_t | x)) (docs/methods/verification.md: Metrics)."""
    a, b = _check_pair(p_wm, p_clean, ("p_wm", "p_clean"))
    return float(np.mean(a - b))


@dataclass(frozen=True)
class BenignMetrics:
    """Benign accuracy and AUROC of the suspect on clean test images (docs/methods/verification.md: Metrics)."""

    accuracy: float
    auroc: float
    n: int
    n_ignored: int
    flags: list[str] = field(default_factory=list)


def benign_metrics(
    labels: np.ndarray,
    probs: np.ndarray | None = None,
    pred: np.ndarray | None = None,
) -> BenignMetrics:
    """Accuracy (from ``probs`` argmax or ``pred``) and AUROC (needs ``probs``).

    Rows with label ``-1`` (``medmark.data.labels.IGNORE``) are left out and counted.
    AUROC uses torchmetrics (binary on ``probs[:, 1]`` for K = 2, macro one-vs-rest for K > 2);
    it is NaN with flag ``auroc_undefined_single_class`` when fewer than two classes (K > 2:
    not all K classes) are present, and ``auroc_unavailable_hard_label`` without ``probs``.
    """
    from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(
            f"test labels must be a 1-D integer array, got {y.dtype} {y.shape}", field="test_labels"
        )
    if (probs is None) == (pred is None):
        raise ValueError("pass exactly one of probs or pred")
    flags: list[str] = []
    keep = y >= 0
    n_ignored = int((~keep).sum())
    if n_ignored:
        flags.append(FLAG_TEST_IGNORED)
    y = y[keep]
    if probs is not None:
        pr = np.asarray(probs, dtype=np.float64)[keep]
        k = pr.shape[1]
        hat = np.argmax(pr, axis=1)
    else:
        pr = None
        hat = np.asarray(pred)[keep]
        k = int(max(hat.max(initial=0), y.max(initial=0))) + 1
    if len(y) == 0:
        raise DataFormatError("no usable test labels (all are -1)", field="test_labels")
    if pr is not None and y.max() >= k:
        raise DataFormatError(
            f"test label {int(y.max())} out of range for a {k}-class model", field="test_labels"
        )
    acc = float(np.mean(hat == y))
    auroc = float("nan")
    present = len(np.unique(y))
    if pr is None:
        flags.append(FLAG_AUROC_HARD_LABEL)
    elif present < 2 or (k > 2 and present < k):
        flags.append(FLAG_AUROC_SINGLE_CLASS)
    elif k == 2:
        auroc = float(binary_auroc(torch.from_numpy(pr[:, 1]), torch.from_numpy(y)))
    else:
        auroc = float(multiclass_auroc(torch.from_numpy(pr), torch.from_numpy(y), num_classes=k))
    return BenignMetrics(accuracy=acc, auroc=auroc, n=len(y), n_ignored=n_ignored, flags=flags)


# --------------------------------------------------------------------------- verification rows


def choose_verification_rows(
    labels: np.ndarray,
    splits: np.ndarray,
    target_class: int,
    n: int,
    seed: int,
    split: str = "verification",
) -> np.ndarray:
    """Seeded choice of up to ``n`` non-target-class rows of ``split`` (docs/methods/verification.md: Tests).

    ``labels`` are task labels (``-1`` = ignored, never chosen); ``splits`` the split names of
    ``prep/r{res}.h5``. Returns sorted row indices. Fewer than 2 candidates is an error; fewer
    than ``n`` takes all of them and logs a warning (the caller records ``m``).
    """
    y = np.asarray(labels)
    s = np.asarray(splits)
    if s.dtype.kind == "S" or s.dtype == object:
        s = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in s])
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and splits {s.shape} must be 1-D of equal length")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    cand = np.flatnonzero((s == split) & (y != target_class) & (y >= 0))
    if len(cand) < 2:
        raise DataFormatError(
            f"only {len(cand)} non-target-class (label != {target_class}) rows in split "
            f"{split!r}; the paired test needs at least 2",
            field="splits",
        )
    if len(cand) <= n:
        if len(cand) < n:
            log.warning(
                "split %r has %d non-target rows, fewer than the %d requested: taking all",
                split,
                len(cand),
                n,
            )
        return cand.astype(np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(cand, size=n, replace=False)).astype(np.int64)


# --------------------------------------------------------------------------- owner directory


@dataclass(frozen=True)
class OwnerVerification:
    """The owner's verification material (written by the X-Mark release stage).

    ``resolution`` is that of the loaded images; ``meta["resolution"]`` is the generator's.
    The test's tau and alpha are not part of it: the verifier chooses them (an ``owner.json``
    of an earlier release that records them is read, those keys ignored).
    """

    owner_dir: Path
    verification_file: Path
    verification_sha256: str  # checked against owner.json
    meta: dict[str, Any]
    target_class: int
    verify_seed: int
    method: str
    resolution: int
    clean: np.ndarray
    watermarked: np.ndarray
    ids: list[str]
    test_images: np.ndarray | H5TestImages | None
    test_labels: np.ndarray | None
    decoys: np.ndarray | None = None  # (K, m, 1, R, R) float32, same images, decoy keys


OWNER_JSON_KEYS: dict[str, type | tuple[type, ...]] = {
    "target_class": int,
    "verify_seed": int,
    "method": str,
    "resolution": int,
}


def _check_u8(ds: Any, path: Path, key: str, resolution: int) -> None:
    """``ds`` (array or HDF5 dataset, not read) is uint8 ``(n, resolution, resolution)``."""
    if ds.dtype != np.uint8 or ds.ndim != 3 or ds.shape[1:] != (resolution, resolution):
        raise DataFormatError(
            f"expected uint8 (n, {resolution}, {resolution}), got {ds.dtype} {ds.shape}",
            file=str(path),
            field=key,
        )


def _u8_images(ds: Any, path: Path, key: str, resolution: int) -> np.ndarray:
    _check_u8(ds, path, key, resolution)
    return (ds[()].astype(np.float32) / np.float32(255.0))[:, None, :, :]


TEST_BLOCK = 512  # test images per query when read from the file (float32: 103 MB at 224 px)


class H5TestImages:
    """The ``test_images`` of a verification file, read block by block.

    A CheXpert-scale test split has tens of thousands of images (float32 at 224 px: 200 kB
    each), so the verifier never holds it whole: :meth:`blocks` yields float32
    ``(b, 1, R, R)`` in ``[0, 1]`` (``u8 / 255``, as :func:`load_owner_verification` returns
    the other images). The file's sha256 was checked when it was loaded.
    """

    def __init__(self, path: Path, resolution: int, n: int, key: str = "test_images") -> None:
        self.path, self.resolution, self.n, self.key = Path(path), resolution, n, key

    def __len__(self) -> int:
        return self.n

    def blocks(self, size: int = TEST_BLOCK) -> Iterator[np.ndarray]:
        """float32 ``(b, 1, R, R)`` blocks of at most ``size`` images, in file order."""
        import h5py

        with h5py.File(self.path, "r") as h5:
            ds = h5[self.key]
            for i in range(0, self.n, size):
                yield (ds[i : i + size].astype(np.float32) / np.float32(255.0))[:, None, :, :]


def iter_test_blocks(test_images: np.ndarray | H5TestImages) -> Iterator[np.ndarray]:
    """An in-memory array as one block, a :class:`H5TestImages` in :data:`TEST_BLOCK` blocks."""
    if isinstance(test_images, H5TestImages):
        yield from test_images.blocks()
    else:
        yield test_images


def _read_owner_json(owner_dir: Path) -> dict[str, Any]:
    jpath = owner_dir / "owner.json"
    if not jpath.is_file():
        raise DataFormatError("owner.json missing from the owner directory", file=str(jpath))
    try:
        meta = json.loads(jpath.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(f"not valid JSON: {e}", file=str(jpath), row=e.lineno) from e
    if not isinstance(meta, dict):
        raise DataFormatError("expected a JSON object", file=str(jpath))
    for key, typ in OWNER_JSON_KEYS.items():
        if key not in meta:
            raise DataFormatError("required key missing", file=str(jpath), field=key)
        v = meta[key]
        if isinstance(v, bool) or not isinstance(v, typ):
            raise DataFormatError(
                f"expected {getattr(typ, '__name__', typ)}, got {v!r}", file=str(jpath), field=key
            )
    if meta["target_class"] < 0:
        raise DataFormatError("must be >= 0", file=str(jpath), field="target_class")
    if meta["resolution"] < 1:
        raise DataFormatError("must be >= 1", file=str(jpath), field="resolution")
    return meta


def _owner_file(owner_dir: Path, name: Any, jpath: Path, field: str) -> Path:
    """``owner_dir / name`` for a relative ``name`` that stays inside ``owner_dir`` (links too)."""
    if not isinstance(name, str) or not name:
        raise DataFormatError(f"expected a file name, got {name!r}", file=str(jpath), field=field)
    pp = Path(name)
    if pp.is_absolute() or ".." in pp.parts or "\\" in name:
        raise DataFormatError(
            f"{name!r} must be a path relative to the owner directory, without '..'",
            file=str(jpath),
            field=field,
        )
    full = owner_dir / pp
    if not full.resolve().is_relative_to(owner_dir.resolve()):
        raise DataFormatError(
            f"{name!r} resolves outside the owner directory {owner_dir}",
            file=str(jpath),
            field=field,
        )
    return full


def _verification_entries(owner_dir: Path, meta: Mapping[str, Any]) -> dict[Path, dict]:
    """Every verification file named in ``owner.json`` → its entry (with a checked ``sha256``)."""
    jpath = owner_dir / "owner.json"
    entries = meta.get("verification", {})
    if not isinstance(entries, Mapping):
        raise DataFormatError(
            "expected an object {resolution: {file, sha256}}", file=str(jpath), field="verification"
        )
    out: dict[Path, dict] = {}
    for res, entry in entries.items():
        where = f"verification.{res}"
        if not isinstance(entry, Mapping):
            raise DataFormatError("expected an object {file, sha256}", file=str(jpath), field=where)
        path = _owner_file(owner_dir, entry.get("file"), jpath, f"{where}.file")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise DataFormatError(
                f"sha256 of {path.name} missing or not 64 hex digits ({sha!r}); every owner file "
                "needs its recorded hash",
                file=str(jpath),
                field=f"{where}.sha256",
            )
        out[path.resolve()] = {**entry, "resolution_key": str(res)}
    return out


def _resolve_verification_file(
    owner_dir: Path,
    meta: Mapping[str, Any],
    resolution: int | None,
    verification_file: str | os.PathLike[str] | None,
) -> Path:
    jpath = owner_dir / "owner.json"
    if verification_file is not None:
        path = Path(verification_file)
        if not path.resolve().is_relative_to(owner_dir.resolve()):
            raise DataFormatError(
                f"verification file {path} is outside the owner directory {owner_dir}",
                file=str(path),
            )
        return path
    if resolution is not None:
        entries = meta.get("verification")
        entry = entries.get(str(resolution)) if isinstance(entries, Mapping) else None
        if isinstance(entry, Mapping):
            return _owner_file(
                owner_dir, entry.get("file"), jpath, f"verification.{resolution}.file"
            )
        return owner_dir / f"verification_r{resolution}.h5"
    if "verification_file" in meta:
        return _owner_file(owner_dir, meta["verification_file"], jpath, "verification_file")
    return owner_dir / "verification.h5"


def load_owner_verification(
    owner_dir: str | os.PathLike[str],
    resolution: int | None = None,
    verification_file: str | os.PathLike[str] | None = None,
) -> OwnerVerification:
    """Read ``owner.json`` and a verification HDF5 of an owner directory.

    The HDF5 is ``verification_file`` if given, else the one for ``resolution``
    (``owner.json["verification"][str(res)]["file"]``, or ``verification_r{res}.h5``), else
    ``owner.json["verification_file"]`` (the X-Mark release writes one per resolution), else
    ``verification.h5``. Every file named in ``owner.json`` must stay inside ``owner_dir``
    (relative, no ``..``, links resolved), and the loaded file must be listed in
    ``owner.json["verification"]`` with a sha256 that matches (returned as
    ``verification_sha256``).
    Content: ``clean``/``watermarked`` uint8 ``(m, R, R)``, ``ids`` str ``(m,)``, optional
    ``test_images`` uint8 ``(n, R, R)`` with ``test_labels`` int ``(n,)``. Images are returned
    as float32 ``(N, 1, R, R)``, ``x = u8 / 255``; the test images as a :class:`H5TestImages`
    (read block by block when queried).
    """
    import h5py

    from medmark.io import sha256_file

    owner_dir = Path(owner_dir)
    if not owner_dir.is_dir():
        raise DataFormatError("owner directory not found", file=str(owner_dir))
    meta = _read_owner_json(owner_dir)
    hpath = _resolve_verification_file(owner_dir, meta, resolution, verification_file)
    if not hpath.is_file():
        raise DataFormatError(
            f"verification file {hpath.name} missing (owner.json: verification_file / "
            "verification)",
            file=str(hpath),
        )
    entry = _verification_entries(owner_dir, meta).get(hpath.resolve())
    if entry is None:
        raise DataFormatError(
            f"{hpath.name} is not listed in owner.json's 'verification' entries, so its sha256 "
            "cannot be checked; only files the release recorded are used",
            file=str(hpath),
        )
    verification_sha256 = sha256_file(hpath)
    if verification_sha256 != entry["sha256"].lower():
        raise DataFormatError(
            f"sha256 differs from the one recorded in owner.json (file changed after release): "
            f"recorded {entry['sha256']}, found {verification_sha256}",
            file=str(hpath),
        )
    try:
        h5 = h5py.File(hpath, "r")
    except OSError as e:
        raise DataFormatError(f"not a readable HDF5 file ({e})", file=str(hpath)) from e
    with h5:
        for key in ("clean", "watermarked", "ids"):
            if key not in h5:
                raise DataFormatError("required dataset missing", file=str(hpath), field=key)
        if resolution is not None:
            res = int(resolution)
        elif "resolution" in h5.attrs:
            res = int(h5.attrs["resolution"])
        elif hpath == owner_dir / "verification.h5":
            res = int(meta["resolution"])
        else:
            res = int(h5["clean"].shape[-1])
        clean = _u8_images(h5["clean"], hpath, "clean", res)
        wm = _u8_images(h5["watermarked"], hpath, "watermarked", res)
        if clean.shape != wm.shape:
            raise DataFormatError(
                f"clean {clean.shape[:1]} and watermarked {wm.shape[:1]} differ in length",
                file=str(hpath),
                field="watermarked",
            )
        if len(clean) < 2:
            raise DataFormatError(
                f"{len(clean)} verification images; the paired test needs at least 2",
                file=str(hpath),
                field="clean",
            )
        try:
            ids = [str(v) for v in h5["ids"].asstr()[()]]
        except (TypeError, ValueError) as e:
            raise DataFormatError(f"expected strings ({e})", file=str(hpath), field="ids") from e
        if len(ids) != len(clean):
            raise DataFormatError(
                f"{len(ids)} ids for {len(clean)} images", file=str(hpath), field="ids"
            )
        has_img, has_lab = "test_images" in h5, "test_labels" in h5
        if has_img != has_lab:
            missing = "test_labels" if has_img else "test_images"
            raise DataFormatError(
                "test_images and test_labels come together; one is missing",
                file=str(hpath),
                field=missing,
            )
        test_images = test_labels = None
        if has_img:
            _check_u8(h5["test_images"], hpath, "test_images", res)
            test_images = H5TestImages(hpath, res, len(h5["test_images"]))
            test_labels = h5["test_labels"][()]
            if not np.issubdtype(test_labels.dtype, np.integer) or test_labels.shape != (
                len(test_images),
            ):
                raise DataFormatError(
                    f"expected int ({len(test_images)},), got {test_labels.dtype} "
                    f"{test_labels.shape}",
                    file=str(hpath),
                    field="test_labels",
                )
            test_labels = test_labels.astype(np.int64)
        decoys = None
        if "decoys" in h5:
            arr = h5["decoys"][()]
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (len(clean), res, res):
                raise DataFormatError(
                    f"expected uint8 (K, {len(clean)}, {res}, {res}), got {arr.dtype} {arr.shape}",
                    file=str(hpath),
                    field="decoys",
                )
            decoys = (arr.astype(np.float32) / np.float32(255.0))[:, :, None, :, :]
    return OwnerVerification(
        owner_dir=owner_dir,
        verification_file=hpath,
        verification_sha256=verification_sha256,
        meta=meta,
        target_class=int(meta["target_class"]),
        verify_seed=int(meta["verify_seed"]),
        method=str(meta["method"]),
        resolution=res,
        clean=clean,
        watermarked=wm,
        ids=ids,
        test_images=test_images,
        test_labels=test_labels,
        decoys=decoys,
    )


# --------------------------------------------------------------------------- verification


def _labels_of(blackbox: BlackBox, images: np.ndarray) -> np.ndarray:
    pred = np.asarray(blackbox.predict_label(images))
    if pred.shape != (len(images),) or not np.issubdtype(pred.dtype, np.integer):
        raise DataFormatError(
            f"predict_label returned {pred.dtype} {pred.shape}; expected int ({len(images)},)",
            field="output",
        )
    return pred.astype(np.int64)


def _proba_of(blackbox: BlackBox, images: np.ndarray, target_class: int) -> np.ndarray:
    pr = np.asarray(blackbox.predict_proba(images), dtype=np.float64)
    if pr.ndim != 2 or pr.shape[0] != len(images) or pr.shape[1] < 2:
        raise DataFormatError(
            f"predict_proba returned shape {pr.shape}; expected ({len(images)}, K >= 2)",
            field="output",
        )
    if target_class >= pr.shape[1]:
        raise DataFormatError(
            f"target class {target_class} out of range for a {pr.shape[1]}-class model",
            field="target_class",
        )
    return pr


def verify_suspect(
    blackbox: BlackBox,
    clean_images: np.ndarray,
    watermarked_images: np.ndarray,
    test_images: np.ndarray | H5TestImages | None,
    test_labels: np.ndarray | None,
    target_class: int,
    tau: float,
    alpha: float,
    hard_label: bool = False,
    params: Mapping[str, Any] | None = None,
    ids: Sequence[str] | None = None,
    decoy_images: np.ndarray | None = None,
    key_tau: float | None = None,
    untargeted: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Query the suspect with ``x``, ``x'`` (and the decoy marks) and decide (module docstring).

    ``untargeted`` (an untargeted watermark such as UBW-P; probability mode only): the decision
    is :func:`untargeted_test` on the probability of the images' true label, which for the
    binary task's non-target verification images is the class ``1 - target_class``; ΔP, WSR
    and the dispersibility are reported beside it.

    Probability mode calls only ``predict_proba`` (labels = argmax); hard-label mode calls only
    ``predict_label`` (ΔP and AUROC are then NaN, flagged; the key-specific test needs
    probabilities and is skipped, flagged). ``decoy_images`` ``(K, m, 1, R, R)``: the same
    images marked with decoy keys. Returns the summary (every
    parameter, test result, ΔP, WSR, BA, AUROC, verdict, flags; ``params`` are stored under
    ``"params"``) and the per-image table from which every number can be recomputed.
    """
    _check_tau_alpha(tau, alpha)
    x = check_images(clean_images, "clean_images")
    xw = check_images(watermarked_images, "watermarked_images")
    if x.shape != xw.shape:
        raise DataFormatError(
            f"clean {x.shape} and watermarked {xw.shape} images differ in shape",
            field="watermarked_images",
        )
    m = len(x)
    if m < 2:
        raise DataFormatError(f"{m} verification images; the paired test needs >= 2")
    if ids is not None and len(ids) != m:
        raise DataFormatError(f"{len(ids)} ids for {m} images", field="ids")
    if (test_images is None) != (test_labels is None):
        raise ValueError("test_images and test_labels come together")
    if decoy_images is not None:
        decoy_images = np.asarray(decoy_images, dtype=np.float32)
        if decoy_images.ndim != 5 or decoy_images.shape[1:] != x.shape:
            raise DataFormatError(
                f"decoy images {decoy_images.shape} must be (K, *{x.shape})", field="decoys"
            )
        if len(decoy_images) == 0:
            decoy_images = None
    flags: list[str] = []
    key_result: TestResult | None = None
    table: dict[str, Any] = {
        "index": np.arange(m),
        "id": list(ids) if ids is not None else [str(i) for i in range(m)],
    }
    if hard_label and untargeted:
        raise ValueError("the untargeted (dispersibility) test needs probabilities")
    if hard_label:
        pred_c = _labels_of(blackbox, x)
        pred_w = _labels_of(blackbox, xw)
        hres = hard_label_test(pred_w, pred_c, target_class, tau, alpha)
        result = hres.primary
        dp = float("nan")
        extra: dict[str, Any] = {
            "secondary_test": hres.dvbw_wilcoxon.to_dict(),
            "target_rate_clean": hres.rate_clean,
            "target_rate_watermarked": hres.rate_wm,
            "discordant_up": hres.discordant_up,
            "discordant_down": hres.discordant_down,
        }
    else:
        pr_c = _proba_of(blackbox, x, target_class)
        pr_w = _proba_of(blackbox, xw, target_class)
        p_c, p_w = pr_c[:, target_class], pr_w[:, target_class]
        pred_c, pred_w = np.argmax(pr_c, axis=1), np.argmax(pr_w, axis=1)
        if untargeted:
            if pr_c.shape[1] != 2:
                raise ValueError("the untargeted test is defined here for the binary task only")
            true = 1 - target_class  # verification images are non-target by construction
            result = untargeted_test(pr_c[:, true], pr_w[:, true], tau, alpha)
        else:
            result = paired_ttest(p_w, p_c, tau, alpha)
        dp = delta_p(p_w, p_c)
        table["p_target_clean"] = p_c
        table["p_target_watermarked"] = p_w
        extra = {
            "mean_p_target_clean": float(p_c.mean()),
            "mean_p_target_watermarked": float(p_w.mean()),
        }
        if decoy_images is not None:
            if key_tau is None:
                raise ValueError("the owner's material has decoy marks: key_tau must be given")
            p_d = np.stack(
                [_proba_of(blackbox, xd, target_class)[:, target_class] for xd in decoy_images]
            )
            key_result = key_specific_test(p_w, p_d, key_tau, alpha)
            table["p_target_decoys_mean"] = p_d.mean(axis=0)
            extra["delta_p_decoys"] = float((p_d - p_c[None]).mean())
            extra["delta_p_decoys_max"] = float((p_d - p_c[None]).mean(axis=1).max())
            extra["n_decoys"] = int(len(p_d))
    table["pred_clean"] = pred_c
    table["pred_watermarked"] = pred_w
    if result.flag:
        flags.insert(0, result.flag)
    if decoy_images is None:
        flags.append(FLAG_NO_DECOYS)
    elif hard_label:
        flags.append(FLAG_KEY_TEST_HARD_LABEL)
    if key_result is not None and key_result.flag:
        flags.append(f"key_test:{key_result.flag}")
    detected = result.significant and (key_result is None or key_result.significant)

    ba = auroc = float("nan")
    n_test = 0
    if test_images is None or len(test_images) == 0:
        flags.append(FLAG_NO_TEST)
    else:
        yt = np.asarray(test_labels)
        if yt.shape != (len(test_images),):
            raise DataFormatError(
                f"{yt.shape} test labels for {len(test_images)} test images", field="test_labels"
            )
        # Queried block by block when read from the file: memory flat in the test split's size.
        blocks = (check_images(b, "test_images") for b in iter_test_blocks(test_images))
        if hard_label:
            bm = benign_metrics(yt, pred=np.concatenate([_labels_of(blackbox, b) for b in blocks]))
        else:
            probs = np.concatenate([_proba_of(blackbox, b, target_class) for b in blocks])
            bm = benign_metrics(yt, probs=probs)
        ba, auroc, n_test = bm.accuracy, bm.auroc, bm.n
        flags.extend(bm.flags)

    summary: dict[str, Any] = {
        "verdict": "detected" if detected else "not detected",
        "significant": detected,
        "verdict_rule": ("tau_test and key_test" if key_result is not None else "tau_test"),
        "tau_test_significant": result.significant,
        "key_test": key_result.to_dict() if key_result is not None else None,
        "key_tau": key_tau,
        "test": result.test,
        "hard_label": hard_label,
        "m": m,
        "tau": tau,
        "alpha": alpha,
        "target_class": target_class,
        "p_value": result.p_value,
        "log10_p": result.log10_p,
        "statistic": result.statistic,
        "df": result.df,
        "delta_p": dp,
        "wsr": wsr(pred_w, target_class),
        "dispersibility": dispersibility(pred_c, pred_w),
        "target_rate_clean_pred": float(np.mean(pred_c == target_class)),
        "benign_accuracy": ba,
        "auroc": auroc,
        "n_test": n_test,
        "flags": flags,
        "params": dict(params or {}),
        **extra,
    }
    return summary, pd.DataFrame(table)


def json_safe(obj: Any) -> Any:
    """Recursively convert to strict JSON: NaN → ``None``, ``±inf`` → ``"inf"``/``"-inf"``.

    numpy scalars/arrays and paths become Python values; the summary's ``flags`` explain them.
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_verification(
    summary: Mapping[str, Any],
    per_image: pd.DataFrame,
    summary_json: str | os.PathLike[str],
    per_image_csv: str | os.PathLike[str],
) -> None:
    """Write the per-image CSV and the JSON summary as a pair: both or neither.

    Both go to temporary files beside their targets first; the CSV is renamed into place, then
    the JSON, and when the JSON's rename fails the new CSV is removed again.
    """
    safe = json_safe(dict(summary))
    text = json.dumps(safe, allow_nan=False, indent=2, sort_keys=True) + "\n"  # strict JSON
    summary_json, per_image_csv = Path(summary_json), Path(per_image_csv)
    tmps: list[Path] = []
    try:
        for final in (per_image_csv, summary_json):
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            os.chmod(name, 0o644)
            tmps.append(Path(name))
        per_image.to_csv(tmps[0], index=False)
        tmps[1].write_text(text)
        os.replace(tmps[0], per_image_csv)
        try:
            os.replace(tmps[1], summary_json)
        except BaseException:
            per_image_csv.unlink(missing_ok=True)
            raise
    finally:
        for t in tmps:
            t.unlink(missing_ok=True)


def verify_owner(
    blackbox: BlackBox,
    owner: OwnerVerification,
    *,
    tau: float,
    alpha: float,
    key_tau: float,
    hard_label: bool,
    params: Mapping[str, Any],
    out_summary: str | os.PathLike[str],
    out_per_image: str | os.PathLike[str],
    on_write_error: Callable[[OSError], Exception] | None = None,
) -> dict[str, Any]:
    """Test one suspect with the owner's loaded material and write summary JSON + per-image CSV.

    The one verification step behind both callers: the ``medmark verify`` command
    (``medmark.cli``) and the workflow's verification stage (``medmark.stages.verification``).
    They differ only in what they pass: tau, key_tau and alpha (the command's options or the
    schema's defaults; the stage's configured ``verify`` section) and ``params`` (recorded under
    ``"params"`` of the summary). The test decided by :func:`verify_suspect` is untargeted when
    ``owner.json`` says ``verification_test: untargeted``. A failed write (``OSError``) is
    re-raised as ``on_write_error(e)`` when that is given; only the write is covered, not the
    queries. Returns the summary.
    """
    summary, per_image = verify_suspect(
        blackbox,
        owner.clean,
        owner.watermarked,
        owner.test_images,
        owner.test_labels,
        target_class=owner.target_class,
        tau=tau,
        alpha=alpha,
        hard_label=hard_label,
        params=params,
        ids=owner.ids,
        decoy_images=owner.decoys,
        key_tau=key_tau,
        untargeted=owner.meta.get("verification_test") == "untargeted",
    )
    try:
        write_verification(summary, per_image, out_summary, out_per_image)
    except OSError as e:
        if on_write_error is None:
            raise
        raise on_write_error(e) from e
    return summary
