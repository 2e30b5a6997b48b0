"""Open-set protocols: the published class lists, protocol structure, label remapping."""

import numpy as np
import pytest

from lgmm_jax.data import protocols


@pytest.mark.parametrize("splits, num_known, num_classes", [
    (protocols.MNIST_SPLITS, 6, 10),
    (protocols.SVHN_SPLITS, 6, 10),
    (protocols.CIFAR10_SPLITS, 6, 10),
    (protocols.CIFAR_PLUS_KNOWN_SPLITS, 4, 10),
    (protocols.CIFAR_PLUS_10_UNKNOWN_SPLITS, 10, 100),
    (protocols.CIFAR_PLUS_50_UNKNOWN_SPLITS, 50, 100),
    (protocols.TINYIMAGENET_SPLITS, 20, 200),
])
def test_published_lists_have_the_protocol_shape(splits, num_known, num_classes):
    assert len(splits) == 5
    for classes in splits:
        assert len(classes) == num_known == len(set(classes))
        assert all(0 <= c < num_classes for c in classes)


def test_published_lists_repeat_some_class_sets():
    # A quirk of the published lists, kept verbatim: some "different" splits know the same classes in
    # another order (so only the order of the relabelling differs).
    def as_sets(splits):
        return [frozenset(c) for c in splits]

    assert as_sets(protocols.CIFAR10_SPLITS)[0] == as_sets(protocols.CIFAR10_SPLITS)[1]
    assert as_sets(protocols.SVHN_SPLITS)[0] == as_sets(protocols.SVHN_SPLITS)[1]
    assert as_sets(protocols.CIFAR_PLUS_KNOWN_SPLITS)[1] == as_sets(protocols.CIFAR_PLUS_KNOWN_SPLITS)[2]
    assert len(set(as_sets(protocols.MNIST_SPLITS))) == 5
    assert len(set(as_sets(protocols.TINYIMAGENET_SPLITS))) == 5


def test_cifar_plus_10_unknowns_are_the_last_ten_of_cifar_plus_50():
    # A structural property of the published lists (checks the transcription of both tables).
    for plus_10, plus_50 in zip(protocols.CIFAR_PLUS_10_UNKNOWN_SPLITS, protocols.CIFAR_PLUS_50_UNKNOWN_SPLITS):
        assert plus_50[-10:] == plus_10


def test_published_lists_spot_values():
    # First and last entries as printed in iCGY96/ARPL split.py and sgvaze osr_splits.py.
    assert protocols.CIFAR10_SPLITS[0] == (0, 6, 4, 9, 1, 7)
    assert protocols.CIFAR_PLUS_KNOWN_SPLITS[4] == (1, 0, 9, 8)
    assert protocols.TINYIMAGENET_SPLITS[0][:3] == (108, 147, 17)
    assert protocols.TINYIMAGENET_SPLITS[4][-2:] == (108, 169)
    assert protocols.MNIST_SPLITS[4] == (6, 3, 4, 9, 8, 2)


@pytest.mark.parametrize("name, dataset, num_classes", [
    ("digits_6_4", "digits", 10), ("fashion_mnist_6_4", "fashion_mnist", 10), ("mnist_6_4", "mnist", 10),
    ("svhn_6_4", "svhn_cropped", 10), ("cifar10_6_4", "cifar10", 10), ("tinyimagenet_20_180", "tiny_imagenet", 200),
])
@pytest.mark.parametrize("split_index", range(5))
def test_class_split_protocols_hold_out_the_complement(name, dataset, num_classes, split_index):
    protocol = protocols.get_protocol(name, split_index)
    assert protocol.dataset == dataset
    (unknown,) = protocol.unknown
    assert unknown.dataset == dataset and unknown.split == protocol.test_split
    assert sorted(protocol.known_classes + unknown.classes) == list(range(num_classes))
    assert protocol.known_test == protocols.DataRef(dataset, "test", protocol.known_classes)
    assert protocol.train_split != protocol.validation_split


def test_cifar_plus_protocols():
    protocol = protocols.get_protocol("cifar_plus_10", 2)
    assert protocol.dataset == "cifar10" and protocol.known_classes == (9, 6, 1, 7) and protocol.num_known == 4
    assert protocol.unknown == (protocols.DataRef("cifar100", "test", (8, 9, 49, 40, 73, 60, 48, 95, 30, 71)),)
    assert len(protocols.get_protocol("cifar_plus_50", 2).unknown[0].classes) == 50
    assert protocol.train_split == "train[:95%]" and protocol.validation_split == "train[95%:]"


def test_ood_protocols_know_every_class():
    protocol = protocols.get_protocol("fashion_mnist_vs_mnist")
    assert protocol.known_classes is None and protocol.unknown == (protocols.DataRef("mnist_5k", "test"),)
    assert {ref.dataset for ref in protocols.get_protocol("cifar10_ood").unknown} == {"svhn_cropped", "cifar100"}


def test_bad_protocol_requests_are_value_errors():
    with pytest.raises(ValueError, match="unknown protocol 'cifar11'"):
        protocols.get_protocol("cifar11")
    with pytest.raises(ValueError, match="split_index must be in 0..4"):
        protocols.get_protocol("cifar10_6_4", 5)


def test_remap_labels_matches_a_dictionary_lookup():
    known = (7, 2, 9)
    labels = np.array([0, 2, 7, 9, 9, 3, 7, 11])
    reference = {c: i for i, c in enumerate(known)}
    new_labels, is_known = protocols.remap_labels(labels, known)
    np.testing.assert_array_equal(new_labels, [reference.get(int(l), -1) for l in labels])
    np.testing.assert_array_equal(is_known, [int(l) in reference for l in labels])
    assert new_labels.dtype == np.int32 and is_known.dtype == bool


def test_remap_labels_with_no_known_class_marks_everything_unknown():
    new_labels, is_known = protocols.remap_labels(np.array([1, 0, 5]), ())
    np.testing.assert_array_equal(new_labels, [-1, -1, -1])
    assert not is_known.any()


def test_remap_labels_rejects_bad_input():
    with pytest.raises(ValueError, match="repeated"):
        protocols.remap_labels(np.array([0, 1]), (1, 1))
    with pytest.raises(ValueError, match="non-negative"):
        protocols.remap_labels(np.array([-1, 1]), (1,))
    with pytest.raises(ValueError, match="known_classes must lie"):
        protocols.label_lookup((-2, 1), 10)
