import pytest

from merkit.data.protocols import PROTOCOLS, Protocol, apply_protocol, get_protocol, label_samples
from merkit.data.registry import all_datasets
from merkit.data.sample import FrameSource, Sample
from merkit.errors import ProtocolError


def _sample(dataset, emotion, subject="s1"):
    return Sample(dataset=dataset, subject=subject, clip_id=emotion, frames=FrameSource((), ()), onset_frame=0,
                  apex_frame=None, offset_frame=0, emotion=emotion)


def test_every_dataset_protocol_exists_and_fits():
    datasets = all_datasets()
    assert set(datasets) >= {"casme2", "samm", "smic", "casme_sq", "casme3", "megc2019", "megc2019-flow"}
    for name, info in datasets.items():
        for protocol in info.protocols:
            assert protocol in PROTOCOLS, (name, protocol)
    for protocol in PROTOCOLS.values():
        assert set(protocol.datasets) <= set(datasets) - {"megc2019", "megc2019-flow"}


@pytest.mark.parametrize("name, classes", [
    ("casme2-5", ("happiness", "disgust", "repression", "surprise", "others")),
    ("casme2-3", ("negative", "positive", "surprise")),
    ("samm-5", ("happiness", "anger", "contempt", "surprise", "other")),
    ("samm-3", ("negative", "positive", "surprise")),
    ("samm-8", ("happiness", "surprise", "contempt", "anger", "other", "disgust", "fear", "sadness")),
    ("smic-3", ("negative", "positive", "surprise")),
    ("casme_sq-4", ("negative", "positive", "surprise", "others")),
    ("casme_sq-3", ("negative", "positive", "surprise")),
    ("casme3-7", ("happy", "disgust", "fear", "anger", "sad", "surprise", "others")),
    ("casme3-4", ("negative", "positive", "surprise", "others")),
    ("casme3-3", ("negative", "positive", "surprise")),
    ("megc2019-3", ("negative", "positive", "surprise")),
    ("samm-4", ("positive", "negative", "surprise", "other")),
    ("casme2-4", ("positive", "negative", "surprise", "other")),
    ("casme_sq-7", ("happy", "sad", "neutral", "anger", "surprise", "disgust", "fear")),
])
def test_class_order(name, classes):
    assert get_protocol(name).classes == classes


@pytest.mark.parametrize("name, dataset, emotion, expected", [
    ("samm-5", "samm", "disgust", None),
    ("samm-5", "samm", "Other", "other"),
    ("samm-3", "samm", "contempt", "negative"),
    ("samm-3", "samm", "other", None),
    ("casme3-4", "casme3", "sad", "negative"),
    ("casme3-4", "casme3", "Others", "others"),
    ("casme3-3", "casme3", "others", None),
    ("casme3-3", "casme3", "happy", "positive"),
    ("casme_sq-3", "casme_sq", "others", None),
    ("megc2019-3", "casme2", "repression", "negative"),
    ("megc2019-3", "casme2", "others", None),
    ("megc2019-3", "casme2", "fear", None),  # fear is negative in SAMM only
    ("megc2019-3", "samm", "fear", "negative"),
    ("megc2019-3", "samm", "happiness", "positive"),
    ("megc2019-3", "samm", "other", None),
    ("megc2019-3", "smic", "surprise", "surprise"),
    ("megc2019-3", "casme2", "positive", "positive"),  # released flow format: class names
    ("megc2019-3", "samm", "negative", "negative"),
    # paper 004's four classes (Sec. 4.1)
    ("samm-4", "samm", "happiness", "positive"),
    ("samm-4", "samm", "contempt", "negative"),
    ("samm-4", "samm", "fear", "negative"),
    ("samm-4", "samm", "sadness", "negative"),
    ("samm-4", "samm", "Other", "other"),
    ("samm-4", "samm", "surprise", "surprise"),
    ("casme2-4", "casme2", "repression", "other"),
    ("casme2-4", "casme2", "others", "other"),
    ("casme2-4", "casme2", "disgust", "negative"),
    ("casme2-4", "casme2", "fear", None),
    ("casme2-4", "casme2", "sadness", None),
])
def test_mappings(name, dataset, emotion, expected):
    protocol = get_protocol(name)
    label = protocol.label_of(emotion, dataset)
    assert (None if label is None else protocol.classes[label]) == expected


def test_composite_protocol_applies_per_dataset():
    samples = [_sample("casme2", "disgust"), _sample("samm", "contempt"), _sample("smic", "positive"),
               _sample("casme2", "sadness"), _sample("samm", "other")]
    kept = apply_protocol(samples, "megc2019-3")
    assert [(s.dataset, s.label) for s in kept] == [("casme2", 0), ("samm", 0), ("smic", 1)]


def test_protocol_refuses_other_datasets():
    with pytest.raises(ProtocolError, match="defined for samm"):
        apply_protocol([_sample("casme2", "anger")], "samm-5")
    with pytest.raises(ProtocolError, match="defined for casme2, samm, smic"):
        apply_protocol([_sample("casme3", "happy")], "megc2019-3")


def test_mapping_to_unknown_class_is_refused():
    with pytest.raises(ProtocolError, match="unknown classes"):
        Protocol(name="bad", classes=("a",), mapping={"x": "a"}, per_dataset={"d": {"y": "b"}})


def test_paper_004_four_class_protocols_keep_the_clips_the_paper_counts():
    """SAMM: all 159 clips of the eight emotions; CASME II: the 246 of its five (Sec. 4.1)."""
    samm = {"happiness": 26, "fear": 8, "surprise": 15, "anger": 57, "disgust": 9, "sadness": 6, "contempt": 12,
            "other": 26}
    kept = apply_protocol([_sample("samm", e) for e, n in samm.items() for _ in range(n)], "samm-4")
    assert len(kept) == 159
    assert [sum(s.label == k for s in kept) for k in range(4)] == [26, 57 + 8 + 9 + 6 + 12, 15, 26]
    casme2 = {"happiness": 32, "surprise": 25, "disgust": 63, "repression": 27, "others": 99, "fear": 2, "sadness": 7}
    kept = apply_protocol([_sample("casme2", e) for e, n in casme2.items() for _ in range(n)], "casme2-4")
    assert len(kept) == 246 and [sum(s.label == k for s in kept) for k in range(4)] == [32, 63, 25, 27 + 99]


def test_casme_sq_7_reads_the_self_reported_emotion():
    def sample(estimated, self_report):
        meta = {} if self_report is None else {"self_report": self_report}
        return Sample(dataset="casme_sq", subject="s15", clip_id=f"{estimated}-{self_report}", frames=FrameSource((), ()),
                      onset_frame=0, apex_frame=None, offset_frame=0, emotion=estimated, meta=meta)

    protocol = get_protocol("casme_sq-7")
    assert protocol.label_source == "self_report"
    samples = [sample("positive", "Happy"), sample("negative", "disgust"), sample("negative", "Fear"),
               sample("negative", "contempt"), sample("others", None), sample("negative", "sadness"),
               sample("surprise", "surprised"), sample("negative", "anger"), sample("negative", "helpless")]
    kept = apply_protocol(samples, protocol)
    assert [protocol.classes[s.label] for s in kept] == ["happy", "disgust", "fear", "sad", "surprise", "anger"]
    # the self-report is free text: words naming none of the seven emotions are left out and counted
    labelled = label_samples(samples, protocol)
    assert labelled.left_out == {"": 1, "contempt": 1, "helpless": 1} and not labelled.skipped
    # the estimated emotion (negative / positive / ...) is not what this protocol reads
    with pytest.raises(ProtocolError, match="not in protocol casme_sq-7"):
        protocol.label_of("negative")
    assert get_protocol("casme_sq-4").label_of_sample(samples[1]) == 0
