"""`maskkit export RUN --onnx FILE`: the run's model as ONNX (input N x 3 x S x S normalised, output N x 18
probabilities), checked against PyTorch with onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..catalog.engine import Catalog
from ..errors import InvalidInput, MaskkitError
from .predict import get_run, load_model


@dataclass
class ExportResult:
    file: str
    max_abs_diff: float  # onnxruntime against PyTorch on a fresh batch
    input_size: int


class _Probabilities(torch.nn.Module):
    def __init__(self, model, backbone=None, decision_bias=None):
        super().__init__()
        self.model, self.backbone = model, backbone
        self.adjust = decision_bias is not None
        self.register_buffer("bias", torch.tensor(decision_bias if self.adjust else [], dtype=torch.float32))

    def forward(self, x):
        if self.backbone is None:
            p = self.model.probs(self.model(x))
        else:
            # feature runs average the mirror image's prediction, as validated (FeatureHeads.mirror_probs)
            p = self.model.mirror_probs(torch.stack([self.backbone(x), self.backbone(x.flip(-1))], 1))
        if self.adjust:  # loss.logit_adjust, as evaluate.decision.apply_bias does it
            p = p * self.bias.exp()
            p = p / p.sum(1, keepdim=True)
        return p


def export_onnx(catalog: Catalog, name: str, out: Path, *, atol: float = 1e-4) -> ExportResult:
    run = get_run(catalog, name)
    model = load_model(run)
    if model.uses_prior:
        raise InvalidInput(f"run {name} uses the face prior (dlib landmarks and descriptor), which ONNX cannot hold; "
                           "export a run trained with model.prior=none")
    wrapper = _Probabilities(model.model, model.backbone, model.decision_bias).eval()
    x = torch.randn(2, 3, model.size, model.size)
    from ..files import atomic_path

    out = Path(out)
    import warnings

    with atomic_path(out, "--onnx file") as tmp:  # removed unless it was exported and checked
        try:
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
            torch.onnx.export(wrapper, (x,), str(tmp), input_names=["image"], output_names=["probs"],
                              dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        except Exception as exc:  # missing onnx package, unsupported operator
            raise MaskkitError(f"ONNX export of run {name} failed: {exc}") from None
        import onnxruntime as ort

        check = torch.randn(3, 3, model.size, model.size)  # another batch size than the export's
        with torch.no_grad():
            expected = wrapper(check).numpy()
        try:
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = session.run(["probs"], {"image": check.numpy()})[0]
        except Exception as exc:
            raise MaskkitError(f"the exported model does not run in onnxruntime: {str(exc).splitlines()[0]}") from None
        diff = float(np.abs(expected - got).max())
        if diff > atol:
            raise MaskkitError(f"ONNX output differs from PyTorch by {diff:.2e} (> {atol:.0e}); not written")
    return ExportResult(str(out), diff, model.size)
