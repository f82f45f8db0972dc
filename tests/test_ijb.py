"""IJB-B/IJB-C as insightface evaluates them, on small releases the tests build in its layout
(templates of several media, faceness scores, both galleries): the protocol against a
NumPy transcription of eval_ijbc.py and ijb_evals.py written apart from kerasbn's, cases
computed by hand (ties, a template of one image, a probe in neither gallery), `evaluate
--ijb` end to end with a resumable embedding cache, and bad releases in one line."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import auc, roc_curve

from kerasbn import evaluate
from kerasbn.data import records
from kerasbn.evaluation import ijb, ijb_features
from kerasbn.faces import template

SUBJECTS = 7  # subject 6 is in neither gallery


def build_release(root, prefix="ijbc", seed=0, side=80):
    """A release of SUBJECTS people, three templates each (1-3 media of 1-2 images), noise
    photos with landmarks near the ArcFace template; subjects 0-2 in the first gallery, 3-5
    in the second, every other template a probe."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "loose_crop"))
    os.makedirs(os.path.join(root, "meta"))
    _, galleries = ijb.SETS[prefix]
    tid_mid, points, gallery_rows, probe_rows = [], [], {g: [] for g in galleries}, []
    template_id, media_id, image = 100, 500, 0
    for subject in range(SUBJECTS):
        for index in range(3):
            template_id += 1
            rows = []
            for _ in range(rng.integers(1, 4)):
                media_id += 1
                for _ in range(rng.integers(1, 3)):
                    image += 1
                    name = f"{image}.jpg"
                    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
                        os.path.join(root, "loose_crop", name), quality=95)
                    marks = template.template(side, side) + rng.normal(0, 1.0, (5, 2))
                    tid_mid.append(f"{name} {template_id} {media_id}")
                    points.append(" ".join([name, *(f"{v:.3f}" for v in marks.ravel()),
                                            f"{rng.uniform(0.5, 1.0):.4f}"]))
                    rows.append(f"{template_id},{subject},{name}")
            if index == 0 and subject < 6:
                gallery_rows[galleries[subject // 3]] += rows
            else:
                probe_rows += rows
    meta = lambda name: os.path.join(root, "meta", f"{prefix}_{name}")
    _write(meta("face_tid_mid.txt"), tid_mid)
    _write(meta("name_5pts_score.txt"), points)
    templates = sorted({int(line.split()[1]) for line in tid_mid})
    subject_of = {int(line.split(",")[0]): int(line.split(",")[1])
                  for rows in (*gallery_rows.values(), probe_rows) for line in rows}
    pairs = [f"{a} {b} {int(subject_of[a] == subject_of[b])}"
             for i, a in enumerate(templates) for b in templates[i + 1:]]
    _write(meta("template_pair_label.txt"), pairs)
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME"
    for gallery, rows in gallery_rows.items():
        _write(meta(f"1N_gallery_{gallery}.csv"), [header, *rows])
    _write(meta("1N_probe_mixed.csv"), [header, *probe_rows])
    return root


def _write(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# The reference: insightface's steps transcribed in their own shape (loops over templates
# and media, argsort searches), apart from kerasbn's vectorised code.
def reference_templates(img_feats, templates, medias, choose_templates=None,
                        choose_ids=None):
    if choose_templates is not None:
        unique_templates, indices = np.unique(choose_templates, return_index=True)
        unique_subjects = choose_ids[indices]
    else:
        unique_templates, unique_subjects = np.unique(templates), None
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats, face_medias = img_feats[ind_t], medias[ind_t]
        unique_medias, counts = np.unique(face_medias, return_counts=True)
        media_feats = []
        for u, ct in zip(unique_medias, counts):
            (ind_m,) = np.where(face_medias == u)
            media_feats.append(face_feats[ind_m] if ct == 1
                               else np.mean(face_feats[ind_m], 0, keepdims=True))
        template_feats[count] = np.sum(np.array(media_feats), 0)
    norms = np.sqrt(np.sum(template_feats ** 2, -1, keepdims=True))
    return template_feats / norms, unique_templates, unique_subjects


def reference_scores(template_feats, unique_templates, p1, p2):
    template2id = np.zeros(max(unique_templates) + 1, dtype=int)
    for count, uqt in enumerate(unique_templates):
        template2id[uqt] = count
    return np.sum(template_feats[template2id[p1]] * template_feats[template2id[p2]], -1)


def reference_tars(label, score):
    fpr, tpr, _ = roc_curve(label, score)
    roc_auc = auc(fpr, tpr)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    tars = []
    for far in [10 ** -i for i in range(6, 0, -1)]:
        _, min_index = min(zip(abs(fpr - far), range(len(fpr))))
        tars.append(tpr[min_index])
    return tars, roc_auc


def reference_1n(query_feats, gallery_feats, query_ids, reg_ids, fars=(0.01, 0.1)):
    similarity = np.dot(query_feats, gallery_feats.T)
    hits = {1: 0, 5: 0, 10: 0}
    pos_sims, correct, non_gallery = [], [], []
    for index, query_id in enumerate(query_ids):
        if query_id in reg_ids:
            gallery_label = np.argwhere(reg_ids == query_id)[0, 0]
            index_sorted = np.argsort(similarity[index], kind="stable")[::-1]
            for k in hits:
                hits[k] += gallery_label in index_sorted[:k]
            pos = similarity[index][reg_ids == query_id][0]
            neg = similarity[index][reg_ids != query_id]
            pos_sims.append(pos)
            correct.append(pos > (neg.max() if len(neg) else -np.inf))
        else:
            non_gallery.append(similarity[index].max())
    pos_sims, correct = np.array(pos_sims), np.array(correct)
    ranked = np.sort(np.array(non_gallery))[::-1]
    recalls = [np.logical_and(correct, pos_sims > ranked[max(int(len(ranked) * far) - 1, 0)])
               .sum() / len(pos_sims) for far in fars]
    return hits, len(pos_sims), recalls


def test_the_protocol_is_insightfaces_on_the_same_features(tmp_path):
    meta = ijb.read(build_release(str(tmp_path / "IJBC")))
    assert meta.set == "IJB-C" and set(meta.galleries) == {"G1", "G2"}
    feats = np.random.default_rng(1).normal(size=(len(meta.names), 16))
    unit, ids = ijb.pool(feats, meta.templates, meta.medias)
    ref, ref_ids, _ = reference_templates(feats, meta.templates, meta.medias)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(unit, ref, atol=1e-12)
    scores = ijb.pair_scores(unit, ids, meta.pairs)
    np.testing.assert_allclose(scores, reference_scores(ref, ref_ids, meta.pairs[:, 0],
                                                        meta.pairs[:, 1]), atol=1e-5)
    figures = ijb.verify(scores, meta.labels)
    tars, roc_auc = reference_tars(meta.labels, scores)
    assert list(figures["tar@far"].values()) == pytest.approx(tars)
    assert figures["auc"] == pytest.approx(roc_auc)
    assert (figures["pairs"], figures["genuine"]) == (len(meta.labels), int(meta.labels.sum()))
    found = ijb.identify(feats, meta)
    probe, _, probe_subjects = reference_templates(feats, meta.templates, meta.medias,
                                                   *meta.probes)
    hits, mated, recalls = {1: 0, 5: 0, 10: 0}, 0, []
    for templates, subjects in meta.galleries.values():
        gallery, _, gallery_subjects = reference_templates(feats, meta.templates,
                                                           meta.medias, templates, subjects)
        h, m, r = reference_1n(probe, gallery, probe_subjects, gallery_subjects)
        hits = {k: hits[k] + h[k] for k in hits}
        mated += m
        recalls.append(r)
    assert found["mated_searches"] == mated == 12  # 2 probes of each of 6 subjects, once
    assert [found["rank"][str(k)] for k in (1, 5, 10)] == pytest.approx(
        [hits[k] / mated for k in (1, 5, 10)])
    assert list(found["tpir@fpir"].values()) == pytest.approx(np.mean(recalls, axis=0))


def test_hand_computed_cases():
    # A template of one image is that image's feature, normalised; two media average then sum.
    templates, medias = np.array([1, 2, 2, 2]), np.array([10, 20, 20, 21])
    feats = np.array([[3.0, 4.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    unit, ids = ijb.pool(feats, templates, medias)
    np.testing.assert_allclose(unit, [[0.6, 0.8], [np.sqrt(0.5), np.sqrt(0.5)]])
    assert ijb.pair_scores(unit, ids, np.array([[2, 1]]))[0] == pytest.approx(
        0.6 * np.sqrt(0.5) + 0.8 * np.sqrt(0.5))
    # Ties: a mate tied with a later gallery template ranks behind it and is no TPIR hit.
    probes = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ranks, correct, mated, non_mated = ijb._search(probes, np.array([7, 9, 5]), gallery,
                                                   np.array([7, 8, 9]))
    assert ranks.tolist() == [2, 1] and correct.tolist() == [False, True]
    # Subject 5 is in no gallery: a non-mated search, its best score 0.8.
    assert non_mated.tolist() == [0.8]
    # Genuine 0.9 and 0.7 against impostors 0.9 and 0.5: the AUC counts the tie half,
    # (0.5 + 1 + 0 + 1) / 4.
    figures = ijb.verify(np.array([0.9, 0.7, 0.9, 0.5]), np.array([1, 1, 0, 0]))
    fpr, tpr, _ = roc_curve([1, 1, 0, 0], [0.9, 0.7, 0.9, 0.5])
    assert figures["auc"] == pytest.approx(auc(fpr, tpr)) == pytest.approx(0.625)


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["ijbc", "ijbb"])
def test_evaluate_ijb_runs_resumes_and_equals_the_reference(prefix, tmp_path, finished_run,
                                                             monkeypatch, capsys):
    root = build_release(str(tmp_path / "release"), prefix)
    export, out = os.path.join(finished_run, "export"), str(tmp_path / "eval")
    argv = ["evaluate", f"--model={export}", f"--ijb={root}", f"--out={out}",
            "--batch_size=8"]
    real_crop, calls = ijb_features._crop, []

    def stops_midway(meta, index, settings):
        calls.append(index)
        if len(calls) > 20:
            raise KeyboardInterrupt
        return real_crop(meta, index, settings)
    monkeypatch.setattr(ijb_features, "_crop", stops_midway)
    with pytest.raises(SystemExit):
        evaluate.main(argv)
    monkeypatch.setattr(ijb_features, "_crop", real_crop)
    capsys.readouterr()
    evaluate.main(argv)
    said = capsys.readouterr()
    assert "resumed at 16 of" in said.err  # two batches of 8 were cached before the stop
    name = {"ijbc": "IJB-C", "ijbb": "IJB-B"}[prefix]
    assert f" (export) | {name} | nearest FPR (insightface) |" in said.out
    result = json.load(open(os.path.join(out, "evaluate.json")))[0]["ijb"]
    assert result["set"] == name and result["templates"] == SUBJECTS * 3
    assert os.path.isfile(os.path.join(out, "ijb_roc.png"))
    assert os.path.isfile(os.path.join(out, "ijb_cmc.png"))
    # Fed the same embeddings (the cache), the reference gives the same scores.
    meta = ijb.read(root)
    cached = [f for f in os.listdir(os.path.join(out, "ijb_cache")) if f.endswith(".npy")]
    views = np.load(os.path.join(out, "ijb_cache", cached[0]))
    feats = (views[:, 0] + views[:, 1]) * meta.faceness[:, None]
    ref, ref_ids, _ = reference_templates(feats.astype(np.float64), meta.templates,
                                          meta.medias)
    scores = np.load(os.path.join(out, result["scores"]))
    assert len(scores) == len(meta.pairs)
    assert np.max(np.abs(scores - reference_scores(ref, ref_ids, meta.pairs[:, 0],
                                                   meta.pairs[:, 1]))) <= 1e-5
    tars, roc_auc = reference_tars(meta.labels, scores)
    assert list(result["tar@far"].values()) == pytest.approx(tars)
    assert set(result["rank"]) == {"1", "5", "10"}
    assert set(result["tpir@fpir"]) == {"1e-02", "1e-01"}


@pytest.mark.parametrize("breaks, said", [
    (lambda meta: _drop_last_line(meta, "name_5pts_score.txt"),
     "has 3 rows but .*face_tid_mid.txt 4"),
    (lambda meta: _replace(meta, "name_5pts_score.txt", "2.jpg", "9.jpg"),
     "line 2 names 2.jpg in face_tid_mid.txt but 9.jpg in name_5pts_score.txt"),
    (lambda meta: _replace(meta, "template_pair_label.txt", "2 1", "2 77"),
     "names template 77, which no image of face_tid_mid.txt belongs to"),
])
def test_a_bad_release_is_one_line(breaks, said, tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "ijbc_face_tid_mid.txt").write_text("1.jpg 1 10\n2.jpg 2 20\n3.jpg 1 11\n"
                                                 "4.jpg 2 21\n")
    (meta / "ijbc_name_5pts_score.txt").write_text(
        "".join(f"{i}.jpg " + " ".join(["1"] * 10) + " 0.9\n" for i in range(1, 5)))
    (meta / "ijbc_template_pair_label.txt").write_text("1 2 0\n2 1 0\n")
    ijb.read(str(tmp_path))
    breaks(meta)
    with pytest.raises(records.DataError, match=said) as info:
        ijb.read(str(tmp_path))
    assert "\n" not in str(info.value)
    with pytest.raises(records.DataError, match="holds no meta/ijbc_face_tid_mid.txt"):
        ijb.read(str(tmp_path / "nowhere"))


def _drop_last_line(meta, name):
    path = meta / f"ijbc_{name}"
    path.write_text("".join(path.read_text().splitlines(True)[:-1]))


def _replace(meta, name, old, new):
    path = meta / f"ijbc_{name}"
    path.write_text(path.read_text().replace(old, new))
