"""Edge agreement (ldm.evaluation.control_edges): what it counts as matched, on maps whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.evaluation.control_edges import drawn_shapes, edge_agreement, edge_map


def outline(shift: int = 0) -> torch.Tensor:
    edges = torch.zeros(32, 32, dtype=torch.bool)
    edges[8 + shift, 8:24] = edges[23 + shift, 8:24] = True
    edges[8 + shift : 24 + shift, 8] = edges[8 + shift : 24 + shift, 23] = True
    return edges


def test_the_same_map_agrees_fully_and_a_disjoint_one_not_at_all():
    same = edge_agreement(outline(), outline())
    assert same.precision == same.recall == same.f1 == same.iou == 1.0
    far = torch.zeros(32, 32, dtype=torch.bool)
    far[0, :4] = True
    disjoint = edge_agreement(far, outline())
    assert disjoint.f1 == disjoint.iou == 0.0
    assert edge_agreement(torch.zeros(32, 32, dtype=torch.bool), outline()).f1 == 0.0  # no edges drawn at all


def test_a_one_pixel_shift_is_within_the_tolerance_and_outside_none():
    assert edge_agreement(outline(1), outline(), tolerance=1).f1 == 1.0
    strict = edge_agreement(outline(1), outline(), tolerance=0)
    assert 0.0 < strict.f1 < 1.0  # the vertical sides still overlap, the horizontal ones moved off


def test_half_the_edges_drawn_is_recall_one_half():
    half = outline()
    half[:, 16:] = False
    score = edge_agreement(half, outline(), tolerance=0)
    assert score.precision == 1.0 and score.recall == pytest.approx(half.sum().item() / outline().sum().item())


def test_drawn_shapes_are_edge_maps_whose_edges_are_found_again():
    for control in drawn_shapes():
        edges = torch.from_numpy(np.asarray(control.convert("L")) > 127)
        assert control.size == (64, 64) and edges.any()
        assert edge_agreement(edge_map(control), edges, tolerance=1).recall > 0.9
