from edgeopt.validate.collapse import collapse_warning


def _entry(**fidelity):
    return {"target": "openvino", "precision": "int8", "path": "/out/det_int8.xml", "fidelity": fidelity}


def test_a_destroyed_map_is_named_with_its_figures():
    text = collapse_warning(_entry(cosine=0.637, sqnr_db=7.9))
    assert "det_int8.xml" in text and "0.637" in text and "7.9 dB" in text and "--max-fidelity-drop" in text


def test_a_classifier_is_judged_by_agreement_not_cosine():
    assert collapse_warning(_entry(top1_agreement=0.70, cosine=0.99)) is not None
    assert collapse_warning(_entry(top1_agreement=0.95, cosine=0.5)) is None


def test_faithful_and_float_artifacts_pass_quietly():
    assert collapse_warning(_entry(cosine=0.98, sqnr_db=20.0)) is None
    assert collapse_warning({**_entry(cosine=0.1), "precision": "fp32"}) is None
    assert collapse_warning({"target": "onnx", "precision": "int8"}) is None
