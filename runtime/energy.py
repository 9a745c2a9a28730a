"""The energy estimate of BSNN_SPEC.md, in one place.

Energy per sample is an *estimate* from 45 nm figures (Horowitz 2014), not a
measurement: the SNN costs ``E_AC`` per synaptic operation (an accumulate)
plus ``E_MAC`` per multiply-accumulate of the analog input layer, which it
computes densely; the ANN costs ``E_MAC`` per MAC. SOPs, and so the SNN's
figure, depend on the schedule that produced them (light cone or full) and on
the initial potential: a caller reporting the figure says which.
"""

from __future__ import annotations

__all__ = ["ENERGY_LABEL", "E_AC_PJ", "E_MAC_PJ", "energy_estimate", "snn_energy_pj"]

#: energy per synaptic operation (an accumulate), pJ, 45 nm (Horowitz 2014)
E_AC_PJ = 0.9
#: energy per multiply-accumulate, pJ, 45 nm (Horowitz 2014)
E_MAC_PJ = 4.6
#: how every report labels the figure
ENERGY_LABEL = f"estimate: E_AC = {E_AC_PJ} pJ per SOP, E_MAC = {E_MAC_PJ} pJ per MAC (45 nm, Horowitz 2014)"


def snn_energy_pj(sops_per_sample: float, input_macs: float) -> float:
    """The SNN's energy per sample, pJ: ``E_AC * SOPs + E_MAC * input MACs``."""
    return E_AC_PJ * float(sops_per_sample) + E_MAC_PJ * float(input_macs or 0)


def energy_estimate(sops_per_sample: float | None, ann_macs: float | None, input_macs: float | None) -> dict:
    """Energy per sample of the SNN and of the ANN it encodes, an *estimate*.

    Parameters
    ----------
    sops_per_sample, ann_macs, input_macs
        mean SOPs per sample of a run, MACs per sample of the ANN, MACs per
        sample of the analog input layer; a part that is unknown is None.

    Returns
    -------
    dict
        ``estimate`` (True), ``label``, ``e_ac_pj``, ``e_mac_pj``,
        ``sops_per_sample``, ``input_macs_per_sample``, ``ann_macs_per_sample``,
        ``snn_energy_pj_per_sample``, ``ann_energy_pj_per_sample`` and
        ``snn_over_ann``; what cannot be computed is None (JSON null).
    """
    snn = snn_energy_pj(sops_per_sample, input_macs) if sops_per_sample is not None else None
    ann = E_MAC_PJ * float(ann_macs) if ann_macs is not None else None
    return {
        "estimate": True,
        "label": ENERGY_LABEL,
        "e_ac_pj": E_AC_PJ,
        "e_mac_pj": E_MAC_PJ,
        "sops_per_sample": sops_per_sample,
        "input_macs_per_sample": float(input_macs) if input_macs is not None else None,
        "ann_macs_per_sample": float(ann_macs) if ann_macs is not None else None,
        "snn_energy_pj_per_sample": snn,
        "ann_energy_pj_per_sample": ann,
        "snn_over_ann": snn / ann if snn is not None and ann else None,
    }
