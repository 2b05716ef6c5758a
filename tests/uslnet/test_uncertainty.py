"""USL-Net's uncertainty module and clean-up rules, on hand-made maps with hand-worked expectations."""
import numpy as np
import pytest

from semi_nnunet.uslnet.uncertainty import (BACKGROUND, FOREGROUND, OUTSIDE, UNCERTAIN, clean_foreground,
                                            combine_with_initial, label_fractions, make_pseudo_label,
                                            three_way_split)

B, F, U = BACKGROUND, FOREGROUND, UNCERTAIN


def test_three_way_split_on_a_hand_made_saliency_map():
    saliency = np.array([[0.00, 0.34, 0.35, 0.50],
                         [0.65, 0.66, 1.00, 0.20],
                         [0.3499, 0.6501, 0.64, 0.36]])
    # < 0.35 background, > 0.65 foreground, the band [0.35, 0.65] (ends included) uncertain
    expected = np.array([[B, B, U, U],
                         [U, F, F, B],
                         [B, F, U, U]])
    np.testing.assert_array_equal(three_way_split(saliency), expected)
    assert three_way_split(saliency).dtype == np.int8


@pytest.mark.parametrize("bg, fg, match", [(0.7, 0.3, "bg_threshold <= fg_threshold"),
                                           (-0.1, 0.5, "0 <= bg_threshold")])
def test_three_way_split_rejects_bad_thresholds(bg, fg, match):
    with pytest.raises(ValueError, match=match):
        three_way_split(np.zeros((2, 2)), bg, fg)


def test_three_way_split_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        three_way_split(np.array([[0.1, np.nan]]))


def _blocks(shape, blocks):
    """A label map of background with foreground rectangles (r0, r1, c0, c1), end-exclusive."""
    label = np.zeros(shape, np.int8)
    for r0, r1, c0, c1 in blocks:
        label[r0:r1, c0:c1] = F
    return label


def test_connectivity_drops_small_components_to_uncertain():
    # 11 x 11, centre (5, 5). A: 5x4 = 20 px around the centre; C: 1 px far away (1 < 10 % of 20 -> dropped);
    # D: 2x3 = 6 px at the top-left (6 >= 2 survives the area rule, but the centrality rule keeps only A).
    label = _blocks((11, 11), [(3, 8, 4, 8), (10, 11, 10, 11), (0, 2, 0, 3)])
    out, info = clean_foreground(label)
    expected = _blocks((11, 11), [(3, 8, 4, 8)])
    expected[10, 10] = U
    expected[0:2, 0:3] = U  # dropped pixels become uncertain, never background
    np.testing.assert_array_equal(out, expected)
    assert info == {"components": 3, "kept": 1, "dropped_pixels": 7, "has_foreground": True}


def test_connectivity_is_8_connected():
    # two pixels touching only at a corner form one component: nothing is dropped
    label = np.zeros((5, 5), np.int8)
    label[1, 1] = label[2, 2] = F
    out, info = clean_foreground(label)
    np.testing.assert_array_equal(out, label)
    assert info["components"] == 1


def test_centrality_keeps_the_component_nearest_the_centre():
    # 9 x 9, centre (4, 4). Two 2x2 squares of equal area: one with centroid (4.5, 4.5) (distance 0.71),
    # one with centroid (0.5, 7.5) (distance 4.95): the first is kept.
    label = _blocks((9, 9), [(4, 6, 4, 6), (0, 2, 7, 9)])
    out, _ = clean_foreground(label)
    np.testing.assert_array_equal(out == F, _blocks((9, 9), [(4, 6, 4, 6)]) == F)
    assert (out[0:2, 7:9] == U).all()


def test_centrality_prefers_the_central_component_over_a_larger_one():
    # 12 x 12, centre (5.5, 5.5). A large 4x6 block at the bottom (centroid (9.5, 2.5), distance 5.0) and a 2x2
    # block at (5..6, 5..6) (centroid (5.5, 5.5), distance 0; area 4 >= 10 % of 24): the central one is kept.
    label = _blocks((12, 12), [(8, 12, 0, 6), (5, 7, 5, 7)])
    out, info = clean_foreground(label)
    np.testing.assert_array_equal(out == F, _blocks((12, 12), [(5, 7, 5, 7)]) == F)
    assert info["dropped_pixels"] == 24


def test_area_rule_comes_before_centrality():
    # a central 1-px component (1 < 10 % of 24) is dropped by the area rule first, so the large one survives
    label = _blocks((12, 12), [(8, 12, 0, 6), (5, 6, 5, 6)])
    out, _ = clean_foreground(label)
    np.testing.assert_array_equal(out == F, _blocks((12, 12), [(8, 12, 0, 6)]) == F)
    assert out[5, 5] == U


def test_no_foreground_trains_on_background_only():
    label = np.array([[B, U], [B, B]], np.int8)
    out, info = clean_foreground(label)
    np.testing.assert_array_equal(out, label)
    assert info["has_foreground"] is False


def test_clean_accepts_nnunet_2d_shape():
    label = _blocks((6, 6), [(2, 4, 2, 4), (0, 1, 5, 6)])[None, None]  # (1, 1, H, W) as nnU-Net stores 2D
    out, _ = clean_foreground(label)
    assert out.shape == (1, 1, 6, 6) and out[0, 0, 0, 5] == U


def test_agree_with_l0_makes_disagreements_uncertain():
    current = np.array([[B, F, F, U, OUTSIDE]], np.int8)
    initial = np.array([[B, F, B, F, OUTSIDE]], np.int8)
    # agreeing certain pixels stay, disagreements (incl. l0 uncertain / current uncertain) become uncertain
    np.testing.assert_array_equal(combine_with_initial(current, initial, "agree_with_l0"),
                                  np.array([[B, F, U, U, OUTSIDE]]))
    np.testing.assert_array_equal(combine_with_initial(current, initial, "replace"), current)
    with pytest.raises(ValueError, match="cycle_combine"):
        combine_with_initial(current, initial, "average")


def test_make_pseudo_label_marks_outside_the_nonzero_region():
    probability = np.array([[0.9, 0.9, 0.1], [0.9, 0.5, 0.1]])
    nonzero = np.array([[True, True, True], [True, True, False]])
    label, info = make_pseudo_label(probability, nonzero)
    np.testing.assert_array_equal(label, np.array([[F, F, B], [F, U, OUTSIDE]]))
    # fractions over the 5 pixels inside: 3 fg, 1 uncertain, 1 bg
    assert label_fractions(label) == pytest.approx({"foreground": 0.6, "uncertain": 0.2, "background": 0.2})
    assert info["has_foreground"]
