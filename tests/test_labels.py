"""The v1 label vector: single dataset, joint training with the mask vector, official targets."""
import pytest
import torch

from stargan.training.labels import DatasetLabels, LabelLayout

CELEBA = ("celeba", ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"], "multi")
RAFD = ("rafd", ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"],
        "onehot")


def test_single_dataset_has_no_mask():
    layout = LabelLayout([CELEBA])
    assert (layout.c_dim, layout.cls_dim, layout.joint) == (5, 5, False)
    c = torch.tensor([[1., 0, 0, 1, 0]])
    assert torch.equal(layout.to_model_label(0, c), c)
    assert layout.cls_slice(0) == slice(0, 5)


def test_joint_layout_and_mask_vector():
    layout = LabelLayout([CELEBA, RAFD])
    assert (layout.c_dim, layout.cls_dim) == (15, 13)
    assert layout.cls_slice(0) == slice(0, 5) and layout.cls_slice(1) == slice(5, 13)
    c5 = torch.tensor([[1., 0, 0, 1, 1], [0, 1, 0, 0, 1]])
    m = layout.to_model_label(0, c5)
    assert torch.equal(m, torch.cat([c5, torch.zeros(2, 8), torch.tensor([[1., 0]] * 2)], 1))
    onehot = torch.eye(8)[[4, 7]]
    r = layout.to_model_label(1, onehot)
    assert torch.equal(r, torch.cat([torch.zeros(2, 5), onehot, torch.tensor([[0., 1]] * 2)], 1))
    # class indices are accepted for one-hot datasets
    assert torch.equal(layout.to_model_label(1, torch.tensor([4, 7])), r)
    assert layout.index("rafd") == 1


def test_label_width_and_kind_are_checked():
    layout = LabelLayout([CELEBA])
    with pytest.raises(ValueError, match=r"expected \[B, 5\]"):
        layout.to_model_label(0, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="label kind"):
        DatasetLabels("x", ("a",), "softmax")
    with pytest.raises(ValueError, match="repeat"):
        LabelLayout([CELEBA, CELEBA])


def test_sample_targets_permute_the_batch_labels_reproducibly():
    layout = LabelLayout([CELEBA])
    labels = torch.tensor([[1., 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 1], [1, 0, 0, 1, 1]])
    t1 = layout.sample_targets(0, labels, torch.Generator().manual_seed(3))
    t2 = layout.sample_targets(0, labels, torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2)
    assert sorted(map(tuple, t1.tolist())) == sorted(map(tuple, labels.tolist()))


def test_celeba_test_targets_follow_create_labels():
    layout = LabelLayout([CELEBA])
    c = torch.tensor([[1., 0, 0, 1, 0]])     # black hair, male, not young
    t = dict(layout.test_targets(0, c))
    assert list(t) == ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
    assert t["Black_Hair"].tolist() == [[1, 0, 0, 1, 0]]
    assert t["Blond_Hair"].tolist() == [[0, 1, 0, 1, 0]]   # hair colours are exclusive
    assert t["Brown_Hair"].tolist() == [[0, 0, 1, 1, 0]]
    assert t["Male"].tolist() == [[1, 0, 0, 0, 0]]         # other attributes flip
    assert t["Young"].tolist() == [[1, 0, 0, 1, 1]]


def test_onehot_test_targets_are_each_class():
    layout = LabelLayout([RAFD])
    targets = layout.test_targets(0, torch.eye(8)[[0, 3, 5]])
    assert [n for n, _ in targets] == RAFD[1]
    for i, (_, t) in enumerate(targets):
        assert torch.equal(t, torch.eye(8)[[i, i, i]])


def test_joint_targets_cover_every_dataset():
    layout = LabelLayout([CELEBA, RAFD])
    names = layout.all_target_names()
    assert len(names) == 13 and names[0] == "celeba/Black_Hair" and names[-1] == "rafd/surprised"
    c = torch.tensor([[0., 1, 0, 0, 1]])
    targets = layout.all_test_targets(0, c)
    assert [n for n, _ in targets] == names
    blond = dict(targets)["celeba/Male"]
    assert blond.tolist() == [[0, 1, 0, 1, 1] + [0] * 8 + [1, 0]]
    happy = dict(targets)["rafd/happy"]
    assert happy.tolist() == [[0] * 5 + [0, 0, 0, 0, 1, 0, 0, 0] + [0, 1]]
    # a RaFD image into CelebA targets: its CelebA labels are unknown, so they start at 0
    from_rafd = dict(layout.all_test_targets(1, torch.eye(8)[[2]]))
    assert from_rafd["celeba/Young"].tolist() == [[0, 0, 0, 0, 1] + [0] * 8 + [1, 0]]


def test_layout_round_trips_through_a_plain_dict():
    layout = LabelLayout([CELEBA, RAFD])
    assert LabelLayout.from_dict(layout.to_dict()) == layout
