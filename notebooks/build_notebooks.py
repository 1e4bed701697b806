"""Write the tutorial notebooks from the cell sources below.

The notebooks are kept as code here so that changes are reviewable; the ``.ipynb`` files are
generated and committed without outputs. Run from the repository root::

    python notebooks/build_notebooks.py            # rewrite notebooks/*.ipynb
    python notebooks/build_notebooks.py --check    # exit 1 if a notebook is out of date

Every notebook runs offline on a CPU in well under a minute and checks its key numbers with
plain ``assert`` statements; ``tests/test_notebooks.py`` executes them all.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}

SETUP = """\
%matplotlib inline
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing below needs the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
"""


def md(text: str) -> tuple[str, str]:
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str, *, setup: bool = False) -> tuple[str, str]:
    source = textwrap.dedent(text).strip("\n")
    return ("code", SETUP + "\n" + source if setup else source)


# --------------------------------------------------------------------------- quickstart
QUICKSTART = [
    md(
        """
        # Quickstart: a model, its sites, activations and a first CKA

        transferlens compares a base language model with an adapted one. Everything starts the
        same way: load a model, name the *sites* you want to look at, capture activations on
        text, and analyse them. This notebook walks through those steps on a tiny random-init
        model, so it runs offline in seconds; swap in your own checkpoint to do it for real.
        """
    ),
    code(
        """
        import shutil
        import tempfile
        from pathlib import Path

        import numpy as np

        import transferlens
        from transferlens.models import load_model, save_checkpoint, tiny_model

        workdir = Path(tempfile.mkdtemp(prefix="transferlens-quickstart-"))
        transferlens.__version__
        """,
        setup=True,
    ),
    md(
        """
        ## 1. Load a model

        `load_model` takes a transferlens `.pt` checkpoint, a Hugging Face model folder, a GGUF
        file, a PEFT adapter folder, an `nn.Module` (with `tokenizer=`), a TransformerLens
        `TransformerBridge` or an nnsight model, and returns a `ModelHandle`: the model, its
        tokenizer, its site map and a fingerprint of its weights.

        Here we build a tiny random-init Llama (`tiny_model`), save it as a checkpoint and load
        it back, as you would load a model made by `transferlens train`.
        """
    ),
    code(
        """
        tiny = tiny_model("llama", n_layers=4, d_model=64, seed=0)
        ckpt = save_checkpoint(
            workdir / "tiny-llama.pt", tiny.model, tiny.tokenizer, {"note": "quickstart"}
        )
        model = load_model(ckpt, name="tiny-llama")

        # the fingerprint is a hash of the weights: same weights, same fingerprint
        assert model.fingerprint == tiny.fingerprint
        assert model.n_layers == 4
        model.describe()
        """
    ),
    md(
        """
        ## 2. Sites

        A *site* is a named place whose activation can be read or replaced: `embed`,
        `resid_pre.l`, `resid_mid.l`, `resid_post.l` (the output of block `l`, before the final
        norm), `attn_out.l`, `mlp_out.l`, `head.l.h`, `final_norm`, `logits`. The same names work
        for every supported architecture (GPT-2, Llama, Gemma 3, BERT).
        """
    ),
    code(
        """
        sitemap = model.sitemap
        print("components:", sitemap.components())
        resid = [str(s) for s in sitemap.sites(["resid_post"])]
        print("residual stream:", resid)
        assert resid == [f"resid_post.{layer}" for layer in range(model.n_layers)]
        sitemap.validate("head[2,1]")  # other spellings parse to the same site
        """
    ),
    md(
        """
        ## 3. Text: the bundled parallel corpus

        transferlens ships real parallel text: LibreOffice help paragraphs in English, Swedish,
        Danish, German and Finnish, with the help module as topic and a fixed train/test split.
        The *long* layout has one row per (paragraph, language).
        """
    ),
    code(
        """
        from transferlens.data import LANGUAGES, load_corpus_long

        corpus = load_corpus_long(languages=["en", "sv"], split="test", min_words=5)
        sample = corpus.select(range(2 * 100))  # 100 paragraphs, each in English and Swedish
        assert len(set(sample["id"])) == 100
        print(LANGUAGES, len(corpus), "rows in the test split")
        sample.to_pandas()[["id", "language", "topic", "text"]].head(4)
        """
    ),
    md(
        """
        ## 4. Capture activations

        `capture` runs the model with hooks on the sites and writes an activation store on disk
        (sharded, memory-mapped, resumable). `select="mean"` keeps one row per paragraph: the
        mean over its tokens (special tokens excluded). The same call on a finished store
        returns it without recomputing. The tiny model reads at most 64 tokens, so longer
        paragraphs are truncated (a warning says how many; the store's manifest records it).
        """
    ),
    code(
        """
        from transferlens.capture import ActivationStore, capture

        store = capture(
            model,
            sample,
            ["embed", "resid_post"],
            select="mean",
            out=workdir / "acts",
            label_columns=["topic"],
        )
        print(store)
        print(store.sites)
        X = {site: np.array(store.read(site)) for site in store.sites}  # loaded into memory
        assert X["resid_post.0"].shape == (200, 64)

        # reopen it later (another session, another notebook)
        again = ActivationStore(workdir / "acts")
        assert np.array_equal(np.asarray(again.read("resid_post.3")), X["resid_post.3"])
        store.rows.head()
        """
    ),
    md(
        """
        ## 5. A first CKA

        Linear CKA (Kornblith et al. 2019) compares two representations of the same examples.
        It is 1 for a representation with itself and does not change under rotations, isotropic
        scaling and translation. Every number that goes into a paper needs an interval:
        `cka_bootstrap` resamples *paragraphs* (the rows of one paragraph move together).
        """
    ),
    code(
        """
        from transferlens.analysis.cka_stats import cka_bootstrap
        from transferlens.analysis.similarity import linear_cka

        X0, X3 = X["resid_post.0"], X["resid_post.3"]
        assert abs(linear_cka(X0, X0) - 1.0) < 1e-12

        Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 64)))  # a rotation
        assert abs(linear_cka(3.0 * X0 @ Q + 1.0, X3) - linear_cka(X0, X3)) < 1e-6  # float32 input

        ci = cka_bootstrap(X0, X3, groups=store.rows["example_id"].to_numpy(), n_boot=500)
        assert ci.n_units == 100 and 0.0 <= ci.ci_low <= ci.ci_high <= 1.0
        print(f"CKA(resid_post.0, resid_post.3) = {ci.value:.3f} "
              f"[{ci.ci_low:.3f}, {ci.ci_high:.3f}] over {ci.n_units} paragraphs")
        """
    ),
    md(
        """
        ## 6. Results and figures

        Every analysis returns an `AnalysisResult`: a tidy table of records (coordinates,
        `value`, `ci_low`/`ci_high`, `n`) plus config and model fingerprints. Reports and paper
        figures are drawn from these records; `transferlens.report.figures` has one function per
        figure.
        """
    ),
    code(
        """
        from transferlens import AnalysisResult, load_results, save_results
        from transferlens.analysis.cka_matrix import cka_matrix
        from transferlens.report import get_style
        from transferlens.report.figures import cka_heatmaps_figure

        sites = store.sites  # embed, resid_post.0 .. resid_post.3
        M = cka_matrix([X[s] for s in sites])  # layer x layer, within the model
        assert np.allclose(np.diag(M), 1.0) and np.allclose(M, M.T)

        result = AnalysisResult(
            "similarity", "cka_within", "linear_cka", models={"model": model.fingerprint}
        )
        for i in range(len(sites)):
            for j in range(len(sites)):
                result.add(M[i, j], pair="model-model", layer_a=i, layer_b=j, n=200)
        save_results(workdir / "results.json", [result])
        loaded, meta = load_results(workdir / "results.json")
        assert loaded[0].records == result.records

        fig = cka_heatmaps_figure(result, get_style("paper"))
        fig
        """
    ),
    md(
        """
        ## Next

        - `probing.ipynb`: what each layer encodes (probes with control tasks, MDL).
        - `similarity.ipynb`: CKA within and between models, Swedish–English similarity.
        - `patching.ipynb`: causal patching within a model and across base and adapted.
        - `training.ipynb`: make an adapted model and see what adaptation changed.
        - On the command line, `transferlens compare base.pt adapted.pt` runs all of it and
          writes a report folder.
        """
    ),
    code(
        """
        shutil.rmtree(workdir)
        """
    ),
]

# --------------------------------------------------------------------------- probing
PROBING = [
    md(
        """
        # Probing: what does each layer encode?

        A linear probe is trained on one layer's activations to predict a label; its held-out
        accuracy says how linearly available the label is there. Accuracy alone overstates
        what a layer encodes, so transferlens reports, per layer and with bootstrap intervals:

        - **selectivity** (Hewitt & Liang 2019): task accuracy − accuracy on a *control task*
          with random labels, same probe and data;
        - **cross-lingual transfer**: train in one language, test in another;
        - **MDL** (Voita & Titov 2020): how many bits the probe needs to transmit the labels
          (compression = uniform codelength / online codelength; higher is more information).

        The model here is a tiny random-init GPT-2, so it runs in seconds; with a real model
        only the `load_model` line changes.
        """
    ),
    code(
        """
        import numpy as np

        from transferlens.analysis.probe_methods import (
            ProbeConfig,
            cross_lingual_transfer,
            mdl_probe,
            selectivity,
        )
        from transferlens.capture import capture
        from transferlens.data import load_corpus
        from transferlens.models import tiny_model
        from transferlens.report import get_style
        from transferlens.results import AnalysisResult

        model = tiny_model("gpt2", n_layers=4, d_model=64, seed=0)
        languages = ["en", "sv", "de"]
        """,
        setup=True,
    ),
    md(
        """
        ## Data and activations

        60 headings and 60 body paragraphs of the corpus test split, each in English, Swedish
        and German (360 rows). One mean-pooled vector per row at the embeddings and at the
        output of every block.
        """
    ),
    code(
        """
        corpus = load_corpus(languages=languages, split="test").shuffle(seed=0)
        picked, count = [], {"heading": 0, "paragraph": 0}
        for row in corpus:
            kind = row["kind"]
            if kind in count and count[kind] < 60 and len(row["en"].split()) >= 2:
                count[kind] += 1
                picked.append(row)
        data = [
            {"id": r["id"], "language": lang, "text": r[lang], "kind": r["kind"]}
            for r in picked
            for lang in languages
        ]
        acts = capture(
            model, data, ["embed", "resid_post"], select="mean", label_columns=["kind"]
        )
        sites = acts.sites
        stack = [np.asarray(acts.read(s)) for s in sites]  # (layers, rows, d_model)
        layer_ids = list(range(len(sites)))  # 0 = embeddings, l + 1 = output of block l
        rows = acts.rows
        language = rows["language"].to_numpy()
        paragraph = rows["example_id"].to_numpy()
        kind = rows["kind"].to_numpy()
        assert len(stack) == 5 and stack[0].shape == (360, 64)
        print(sites, rows.shape)
        """
    ),
    md(
        """
        ## Language identity per layer, with a control task

        Label: the row's language. Each row is its own example (fold and bootstrap unit); the
        control task gives every example one random label drawn from the label distribution.
        Selectivity is the paired difference, so its interval comes from the same resampled
        examples.
        """
    ),
    code(
        """
        config = ProbeConfig(n_folds=5, seeds=(0,), n_boot=1000)
        example = np.char.add(paragraph.astype(str), np.char.add("|", language.astype(str)))
        lang_sel = selectivity(
            stack, language, example, config=config, layer_ids=layer_ids, task="language_id"
        )

        def one(result, **coords):
            [record] = result.where(**coords)
            return record

        for layer in layer_ids:
            t = one(lang_sel, layer=layer, quantity="task_accuracy")
            c = one(lang_sel, layer=layer, quantity="control_accuracy")
            s = one(lang_sel, layer=layer, quantity="selectivity")
            print(f"layer {layer}: task {t['value']:.3f}  control {c['value']:.3f}  "
                  f"selectivity {s['value']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]")

        # the embeddings carry the language (the tokens differ), the control task is at chance
        embed_sel = one(lang_sel, layer=0, quantity="selectivity")
        assert one(lang_sel, layer=0, quantity="task_accuracy")["value"] > 0.6  # chance: 1/3
        assert embed_sel["ci_low"] > 0  # selective, with 95% confidence
        for layer in layer_ids:
            assert one(lang_sel, layer=layer, quantity="control_accuracy")["value"] < 0.5
            assert one(lang_sel, layer=layer, quantity="selectivity")["value"] > 0
        """
    ),
    md(
        """
        Figures come from `transferlens.report.figures`; `probe_layers_figure` reads records with
        `task`, `model`, `kind` (`task`/`control`), `layer` and the interval.
        """
    ),
    code(
        """
        from transferlens.report.figures import probe_layers_figure

        fig_result = AnalysisResult(
            "probe", "probe_accuracy", "accuracy",
            data={"chance": {"language_id": 1 / len(languages)}},
        )
        for r in lang_sel.records:
            kind_of = {"task_accuracy": "task", "control_accuracy": "control"}.get(r["quantity"])
            if kind_of:
                fig_result.add(r["value"], ci=(r["ci_low"], r["ci_high"]), n=r["n"],
                               task="language_id", model="model", kind=kind_of, layer=r["layer"])
        probe_layers_figure(fig_result, get_style("paper"))
        """
    ),
    md(
        """
        ## Cross-lingual transfer

        Label: heading vs body paragraph. Train the probe on one language, test on another.
        Folds are drawn over paragraphs shared by all languages, so no cell tests on a paragraph
        whose translation was trained on. Headings are short and have no final full stop in any
        of the languages, which a probe can pick up whatever the language.
        """
    ),
    code(
        """
        by_lang = {lang: [s[language == lang] for s in stack] for lang in languages}
        transfer = cross_lingual_transfer(
            by_lang,
            {lang: kind[language == lang] for lang in languages},
            {lang: paragraph[language == lang] for lang in languages},
            config=config,
            layer_ids=layer_ids,
            task="kind",
        )
        matrix = np.array([
            [one(transfer, layer=0, train_language=a, test_language=b)["value"] for b in languages]
            for a in languages
        ])
        print("embeddings, rows = train language, columns = test language\\n", matrix.round(3))

        en_sv = one(transfer, layer=0, train_language="en", test_language="sv")
        assert en_sv["ci_low"] > 0.5  # above chance (balanced classes) when trained on English only
        assert len(transfer.records) == len(layer_ids) * len(languages) ** 2
        """
    ),
    code(
        """
        from transferlens.report.figures import probe_transfer_figure

        at_embed = AnalysisResult("probe", "probe_transfer", "accuracy", config={"layer": 0})
        for r in transfer.where(layer=0):
            at_embed.add(r["value"], ci=(r["ci_low"], r["ci_high"]), model="embeddings",
                         train_language=r["train_language"], test_language=r["test_language"])
        probe_transfer_figure(at_embed, get_style("paper"))
        """
    ),
    md(
        """
        ## MDL: an information measure that does not depend on probe accuracy

        The online code sends the labels block by block, each block with a probe trained on all
        earlier blocks. Compression 1 is a uniform code; real information compresses more, and
        the control task (nothing to learn) slightly less than 1.
        """
    ),
    code(
        """
        mdl = mdl_probe(
            [stack[0], stack[-1]], language, example, config=config, layer_ids=[0, 4],
            task="language_id",
        )
        for r in mdl.records:
            print(f"layer {r['layer']} {r['labels']:>7}: compression {r['value']:.2f} "
                  f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]; codelength "
                  f"{r['codelength_bits']:.0f} bits, uniform code {r['uniform_bits']:.0f} bits")

        task_mdl = one(mdl, layer=0, labels="task")
        control_mdl = one(mdl, layer=0, labels="control")
        assert task_mdl["value"] > 1.0 > control_mdl["value"]
        assert task_mdl["ci_low"] > control_mdl["ci_high"]
        """
    ),
]

# --------------------------------------------------------------------------- similarity
SIMILARITY = [
    md(
        """
        # Representation similarity: CKA within and between models

        This notebook compares representations of the same paragraphs:

        1. layer × layer CKA within a model and between two models;
        2. minibatch (streaming) CKA for data that does not fit in memory;
        3. Swedish–English similarity per layer: CKA and translation retrieval;
        4. bootstrap intervals over paragraphs.

        The two models are a tiny random-init GPT-2 and a copy whose block 2 MLP was changed
        ("planted"), so we know what the answer must be: identical representations up to the
        input of block 2, different from its output on.
        """
    ),
    code(
        """
        import copy

        import numpy as np
        import torch

        from transferlens.capture import capture_pair
        from transferlens.data import load_corpus_long
        from transferlens.models import SiteMap, load_model, tiny_model
        from transferlens.report import get_style
        from transferlens.results import AnalysisResult

        base = tiny_model("gpt2", n_layers=4, d_model=64, seed=0)
        PLANTED = 2  # the block whose MLP differs
        changed = copy.deepcopy(base.model)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in SiteMap(changed).blocks[PLANTED].mlp.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        other = load_model(changed, tokenizer=base.tokenizer, name="planted")
        assert other.fingerprint != base.fingerprint
        """,
        setup=True,
    ),
    md(
        """
        ## Activations of both models on the same rows

        `capture_pair` runs both models on exactly the same batches: 200 test-split paragraphs
        in English and Swedish, one mean-pooled row per paragraph and language.
        """
    ),
    code(
        """
        corpus = load_corpus_long(languages=["en", "sv"], split="test", min_words=5)
        sample = corpus.select(range(2 * 200))
        pair = capture_pair(base, other, sample, ["embed", "resid_post"], select="mean")
        sites = pair.base.sites
        A = [np.asarray(pair.base.read(s)) for s in sites]  # base: 5 x (400, 64)
        B = [np.asarray(pair.adapted.read(s)) for s in sites]  # planted copy
        rows = pair.base.rows
        language = rows["language"].to_numpy()
        paragraph = rows["example_id"].to_numpy()
        layers = list(range(len(sites)))  # 0 = embeddings, l + 1 = output of block l
        print(sites, A[0].shape)
        """
    ),
    md(
        """
        ## 1. Layer × layer CKA

        `cka_matrix(A)` is the within-model matrix (symmetric, ones on the diagonal);
        `cka_matrix(A, B)` the cross-model one. Blocks before the planted one compute the same
        thing in both models, so their cross-model CKA is exactly 1; from block 2 on it drops.
        """
    ),
    code(
        """
        from transferlens.analysis.cka_matrix import cka_matrix
        from transferlens.report.figures import cka_heatmaps_figure

        within = cka_matrix(A)
        between = cka_matrix(A, B)
        print("base vs planted, same layer:", np.diag(between).round(4))

        assert np.allclose(np.diag(within), 1.0) and np.allclose(within, within.T)
        for layer in layers:
            if layer <= PLANTED:  # embeddings and the outputs of blocks 0 .. PLANTED - 1
                assert abs(between[layer, layer] - 1.0) < 1e-9
            else:
                assert between[layer, layer] < 0.999

        heat = AnalysisResult("similarity", "cka_matrix", "linear_cka",
                              config={"display_names": {"planted": "planted copy"}})
        for name, M in (("base-base", within), ("base-planted", between)):
            for i in layers:
                for j in layers:
                    heat.add(M[i, j], pair=name, layer_a=i, layer_b=j)
        cka_heatmaps_figure(heat, get_style("paper"))
        """
    ),
    md(
        """
        ## 2. Minibatch CKA

        For more rows than fit in memory, `MinibatchCKA` accumulates the unbiased HSIC of each
        batch (Nguyen, Raghu & Kornblith 2021). It estimates the full-data *debiased* CKA; it is
        not the mean of per-batch CKA values, which is biased upwards for small batches.

        Batches must be random samples of the rows: the corpus lists paragraphs page by page,
        and batches of neighbouring rows (similar paragraphs, both languages of each) estimate
        a within-page similarity instead. Here rows are streamed in a seeded random order.
        """
    ),
    code(
        """
        from transferlens.analysis.minibatch_cka import MinibatchCKA

        order = np.random.default_rng(0).permutation(len(language))
        streaming = MinibatchCKA()
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            streaming.update([a[batch] for a in A], [b[batch] for b in B])
        mb = streaming.compute()
        full = cka_matrix(A, B, debiased=True)
        print("minibatch:", np.diag(mb).round(3))
        print("full data, debiased:", np.diag(full).round(3))

        assert mb.shape == (5, 5) and streaming.n_examples_ == 400
        assert np.allclose(np.diag(mb)[: PLANTED + 1], 1.0)  # identical layers: exactly 1
        assert np.max(np.abs(mb - full)) < 0.1  # the same quantity, estimated from batches
        """
    ),
    md(
        """
        ## 3. Swedish–English similarity per layer

        Row `i` of the Swedish matrix translates row `i` of the English one. Per layer: linear CKA
        between the two languages, and translation retrieval (is each Swedish paragraph's
        nearest English neighbour, by cosine after per-language centring, its translation?).
        Chance retrieval is 1/200.

        Expect warnings here: where CKA is low, the bootstrap distribution of CKA sits above the
        full-data value (a resample repeats paragraphs, and a repeated pair looks perfectly
        aligned), and transferlens says so when a value falls outside its own interval. Read
        such intervals as "the resampling spread", not as coverage, or use more paragraphs.
        """
    ),
    code(
        """
        from transferlens.analysis.alignment import retrieval_hits
        from transferlens.analysis.cka_stats import cka_bootstrap
        from transferlens.analysis.stats import bootstrap_ci

        sv, en = np.flatnonzero(language == "sv"), np.flatnonzero(language == "en")
        assert (paragraph[sv] == paragraph[en]).all()  # parallel rows
        n = len(sv)

        crossling = AnalysisResult("similarity", "crosslingual", "mixed",
                                   config={"languages": ["sv", "en"]}, data={"chance": 1 / n})
        for model, stacks in (("base", A), ("planted", B)):
            for layer in layers:
                X, Y = stacks[layer][sv], stacks[layer][en]
                c = cka_bootstrap(X, Y, n_boot=1000, seed=0)
                crossling.add(c.value, ci=c.ci, n=n, metric="cka", model=model, layer=layer)
                hits = retrieval_hits(X, Y).astype(float)
                r = bootstrap_ci(np.mean, hits, n_boot=1000, seed=0)
                crossling.add(r.value, ci=r.ci, n=n, metric="retrieval", model=model, layer=layer)

        def one(result, **coords):
            [record] = result.where(**coords)
            return record

        for layer in layers:
            c = one(crossling, metric="cka", model="base", layer=layer)
            r = one(crossling, metric="retrieval", model="base", layer=layer)
            print(f"layer {layer}: sv-en CKA {c['value']:.3f}, retrieval {r['value']:.3f} "
                  f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]")

        # the embeddings share tokens across the two languages: far above chance
        assert one(crossling, metric="retrieval", model="base", layer=0)["ci_low"] > 5 / n
        # identical layers in both models give identical numbers
        for layer in range(PLANTED + 1):
            for metric in ("cka", "retrieval"):
                a = one(crossling, metric=metric, model="base", layer=layer)["value"]
                b = one(crossling, metric=metric, model="planted", layer=layer)["value"]
                assert abs(a - b) < 1e-9
        """
    ),
    code(
        """
        from transferlens.report.figures import crosslingual_figure

        crosslingual_figure(crossling, get_style("paper"))
        """
    ),
    md(
        """
        ## 4. Bootstrap intervals

        Intervals resample *units*: here paragraphs. `cka_bootstrap` is a fast, exact version of
        the generic `bootstrap_ci` with CKA as the statistic: same draws, same interval. Base
        and planted representations of one paragraph are resampled together, and the same seed
        gives the same interval.
        """
    ),
    code(
        """
        from transferlens.analysis.similarity import linear_cka

        last = layers[-1]
        fast = cka_bootstrap(A[last], B[last], groups=paragraph, n_boot=300, seed=1)
        slow = bootstrap_ci(linear_cka, A[last], B[last], groups=paragraph, n_boot=300, seed=1)
        print(f"CKA base vs planted at layer {last}: {fast.value:.4f} "
              f"[{fast.ci_low:.4f}, {fast.ci_high:.4f}] over {fast.n_units} paragraphs")

        assert fast.n_units == 200  # paragraphs, not rows: the en and sv rows move together
        assert abs(fast.value - slow.value) < 1e-9
        assert abs(fast.ci_low - slow.ci_low) < 1e-9 and abs(fast.ci_high - slow.ci_high) < 1e-9
        again = cka_bootstrap(A[last], B[last], groups=paragraph, n_boot=300, seed=1)
        assert (again.ci_low, again.ci_high) == (fast.ci_low, fast.ci_high)  # deterministic
        """
    ),
]

# --------------------------------------------------------------------------- patching
PATCHING = [
    md(
        """
        # Causal patching: within a model and across base and adapted

        Activation patching runs a model on one input and replaces the activation at one site
        with the value it had on another run, then measures how the output moves:

        - **within a model**: a *clean* and a *corrupt* prompt of the same token length;
          *denoising* runs the corrupt prompt and inserts clean activations (normalised effect
          0 = corrupt run, 1 = clean run);
        - **across two models** (the transferlens case): run the base model and insert the
          adapted model's activation (0 = base behaviour, 1 = adapted behaviour).

        Both run on tiny random-init models in float64, where the identities the method rests on
        hold exactly and are checked below.
        """
    ),
    code(
        """
        import copy

        import numpy as np
        import torch

        from transferlens.analysis.cross_model import cross_model_patching, default_prompts
        from transferlens.analysis.patching import activation_patching
        from transferlens.models import SiteMap, load_model, tiny_model
        from transferlens.report import get_style
        from transferlens.results import AnalysisResult
        """,
        setup=True,
    ),
    md(
        """
        ## 1. Within one model: clean vs corrupt

        The prompts differ in one token (`Celler` vs `dialog`); the metric is the logit
        difference between two answer tokens at the last position.
        """
    ),
    code(
        """
        model = load_model(tiny_model("llama", n_layers=4, d_model=64, seed=0), dtype="float64")
        clean = "Choose Format - Celler to open the"
        corrupt = "Choose Format - dialog to open the"
        tok = model.tokenizer
        clean_ids, corrupt_ids = tok(clean)["input_ids"], tok(corrupt)["input_ids"]
        differs = [i for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids, strict=True)) if a != b]
        print(len(clean_ids), "tokens; they differ at position(s)", differs)

        grid = activation_patching(
            model, clean, corrupt, "logit_diff", "resid_pre", answer=" dialog", wrong=" position"
        )
        effect = grid.normalized().numpy()  # (layer, position)
        print(f"logit diff: clean {grid.clean_value:.3f}, corrupt {grid.corrupt_value:.3f}")
        print(effect.round(2))
        """
    ),
    md(
        """
        Checks: at layer 0 the residual stream is just the token embeddings, so positions where
        the two prompts have the same token carry nothing (effect 0). Patching *all* positions of
        `resid_pre` at any layer restores the clean run exactly (effect 1). At the output of the
        last block only the last position can still reach the last position's logits (effect 1
        there, 0 elsewhere).
        """
    ),
    code(
        """
        same = [p for p in range(len(clean_ids)) if p not in differs]
        assert np.allclose(effect[0, same], 0.0, atol=1e-9)
        assert abs(grid.clean_value - grid.corrupt_value) > 1e-3

        whole = activation_patching(
            model, clean, corrupt, "logit_diff", "resid_pre", answer=" dialog", wrong=" position",
            by_position=False,
        )
        assert np.allclose(whole.normalized().numpy(), 1.0, atol=1e-9)  # every layer

        last = model.n_layers - 1
        out = activation_patching(
            model, clean, corrupt, "logit_diff", "resid_post", answer=" dialog", wrong=" position",
            layers=[last],
        ).normalized().numpy()[0]
        assert abs(out[-1] - 1.0) < 1e-9 and np.allclose(out[:-1], 0.0, atol=1e-9)
        """
    ),
    code(
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.9, 2.4), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(effect, cmap="RdBu_r", vmin=-1, vmax=1, origin="lower", aspect="auto")
        ax.set_xticks(range(len(clean_ids)),
                      [tok.decode([t]) for t in clean_ids], rotation=60, fontsize=7)
        ax.set_xlabel("position (clean token)")
        ax.set_ylabel("layer (resid_pre)")
        fig.colorbar(image, ax=ax, label="normalised effect")
        fig
        """
    ),
    md(
        """
        As an `AnalysisResult` (one record per cell, with bootstrap intervals over prompts when
        there are several prompts):
        """
    ),
    code(
        """
        records = grid.to_result().where(metric="normalized_effect", layer=0)
        assert len(records) == len(clean_ids)
        records[:3]
        """
    ),
    md(
        """
        ## 2. Across two models: a planted pair

        The "adapted" model is a copy of the base model whose block-2 MLP was changed, and
        nothing else. Cross-model patching on the same inputs (Swedish continuations from the
        corpus; metric: log-probability of the reference continuation) must then find:

        - `adapted_to_base` (run the base model, insert the adapted activation), `resid_post`:
          effect 0 before block 2 (the activations are the same), exactly 1 from block 2 on
          (everything downstream is the adapted computation); `mlp_out` at block 2 alone: effect
          1, it *is* the change; `mlp_out` before block 2: 0;
        - `base_to_adapted` (run the adapted model, insert the base activation): the mirror
          image, 1 (still adapted) where the activations agree and 0 where the inserted base
          activation undoes the change.
        """
    ),
    code(
        """
        PLANTED = 2
        base = load_model(tiny_model("gpt2", n_layers=4, d_model=64, seed=5), dtype="float64")
        changed = copy.deepcopy(base.model)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in SiteMap(changed).blocks[PLANTED].mlp.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        adapted = load_model(changed, tokenizer=base.tokenizer, name="planted")

        prompts = default_prompts(base.tokenizer, n=24, prompt_tokens=12, target_tokens=4,
                                  kinds=("continuation",))
        cross = cross_model_patching(
            base, adapted, prompts, components=("resid_pre", "resid_post", "mlp_out"), n_boot=500
        )
        print(cross.data["baselines"], cross.data["n_excluded"], "prompts excluded")

        def effect_at(component, layer, direction="adapted_to_base"):
            [r] = cross.where(direction=direction, component=component, layer=layer,
                              metric="normalized_effect")
            return r

        for layer in range(base.n_layers):
            r = effect_at("resid_post", layer)
            print(f"resid_post.{layer}: {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        """
    ),
    code(
        """
        def expected(differs, direction):  # 0 = base behaviour, 1 = adapted, both directions
            if direction == "adapted_to_base":  # base model, adapted activation inserted
                return 1.0 if differs else 0.0
            return 0.0 if differs else 1.0  # adapted model, base activation inserted

        for direction in ("adapted_to_base", "base_to_adapted"):
            for layer in range(base.n_layers):
                checks = [("resid_post", layer >= PLANTED), ("resid_pre", layer > PLANTED)]
                if layer <= PLANTED:  # later MLPs read a changed input: neither 0 nor 1
                    checks.append(("mlp_out", layer == PLANTED))
                for component, differs in checks:
                    value = effect_at(component, layer, direction)["value"]
                    assert abs(value - expected(differs, direction)) < 1e-6, (component, layer)
        """
    ),
    md(
        """
        The report's patching figure (`patch_heatmap_figure`) reads records with `direction`,
        `component`, `layer` and the normalised effect:
        """
    ),
    code(
        """
        from transferlens.report.figures import patch_heatmap_figure

        heat = AnalysisResult("patch", "patch_cross_model", "normalised_effect")
        for r in cross.where(metric="normalized_effect", position="all", head=None):
            heat.add(r["value"], ci=(r["ci_low"], r["ci_high"]), n=r["n"],
                     direction=r["direction"], component=r["component"], layer=r["layer"])
        patch_heatmap_figure(heat, get_style("paper"))
        """
    ),
]

# --------------------------------------------------------------------------- training
TRAINING = [
    md(
        """
        # Training: make an adapted model, then see what adaptation changed

        The training module makes the base/adapted pairs transferlens is built to study:
        `pretrain` trains a tokenizer and a small causal LM on English + German from the
        corpus (Swedish unseen), and `adapt` continues pretraining it on Swedish. Both write
        transferlens checkpoints whose provenance names the parent, config, data and seed.

        Settings: the `tiny` preset with fewer steps, so the notebook runs in well under a
        minute on a laptop CPU. Drop the overrides for the full `tiny` preset, or use
        `preset="default"` (a few minutes) for a model worth analysing.
        """
    ),
    code(
        """
        import shutil
        import tempfile
        from pathlib import Path

        import numpy as np

        from transferlens.models import load_model
        from transferlens.report import get_style
        from transferlens.results import AnalysisResult
        from transferlens.training import adapt, preset_config, pretrain

        workdir = Path(tempfile.mkdtemp(prefix="transferlens-training-"))  # or Path("runs/pair")
        """,
        setup=True,
    ),
    md("## 1. Pretrain a base model, adapt it to Swedish"),
    code(
        """
        base_cfg = preset_config("pretrain", "tiny", steps=60, max_texts=1000, vocab_size=512,
                                 eval_texts=16, save_every=0)
        base_run = pretrain(workdir / "base.pt", base_cfg, preset="tiny")
        print(f"pretrain: {base_run.steps} steps in {base_run.seconds:.1f} s")

        adapt_cfg = preset_config("adapt", "tiny", steps=40, max_examples=800, eval_texts=16,
                                  save_every=0)
        adapt_run = adapt(workdir / "base.pt", workdir / "adapted.pt", adapt_cfg, preset="tiny")
        print(f"adapt: {adapt_run.steps} steps in {adapt_run.seconds:.1f} s")
        {k: round(v, 3) for k, v in adapt_run.metrics.items() if k.endswith("sv")}
        """
    ),
    code(
        """
        base = load_model(workdir / "base.pt", name="base")
        adapted = load_model(workdir / "adapted.pt", name="adapted")

        assert adapted.provenance["method"] == "adapt"
        assert adapted.provenance["parent"]["fingerprint"] == base.fingerprint
        assert adapted.fingerprint != base.fingerprint
        adapted.describe()["provenance"]["config"]["language"]
        """
    ),
    md(
        """
        ## 2. Behaviour: bits per byte on held-out text

        Bits per byte (summed NLL / ln 2 / UTF-8 bytes) does not depend on the tokenizer. The
        difference adapted − base is bootstrapped over paragraphs with the same resampled
        paragraphs for both models (a paired interval).
        """
    ),
    code(
        """
        from transferlens.analysis.behaviour import bits_per_byte, token_nll
        from transferlens.analysis.stats import bootstrap_ci, paired_bootstrap
        from transferlens.data import load_corpus

        test = load_corpus(languages=["en", "sv"], split="test", min_words=5).select(range(64))

        behaviour = AnalysisResult("behaviour", "bits_per_byte", "bits_per_byte")
        change = {}
        for lang in ("sv", "en"):
            texts = test[lang]
            scored = {name: token_nll(h, texts) for name, h in (("base", base), ("adapted", adapted))}
            for name, s in scored.items():
                ci = bootstrap_ci(bits_per_byte, s.nll, s.n_bytes, n_boot=1000, seed=0)
                behaviour.add(ci.value, ci=ci.ci, n=len(texts), model=name, language=lang)
            change[lang] = paired_bootstrap(
                bits_per_byte,  # of (per-text NLL, per-text bytes): a ratio of sums
                (scored["adapted"].nll, scored["adapted"].n_bytes),
                (scored["base"].nll, scored["base"].n_bytes), n_boot=1000, seed=0,
            )
            d = change[lang]
            print(f"{lang}: base {d.value_b:.3f} -> adapted {d.value_a:.3f} bits per byte, "
                  f"change {d.value:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]")

        # adaptation to Swedish lowers Swedish bits per byte, beyond resampling noise
        assert change["sv"].value_a < change["sv"].value_b
        assert change["sv"].ci_high < 0
        """
    ),
    code(
        """
        from transferlens.report.figures import behaviour_figure

        behaviour_figure(behaviour, get_style("paper"))
        """
    ),
    md(
        """
        ## 3. Representations: base vs adapted CKA per layer

        Both models read the same paragraphs (`capture_pair`, one tokenizer, rows aligned);
        per layer, linear CKA between the base and the adapted representation, with a
        bootstrap interval over paragraphs.
        """
    ),
    code(
        """
        from transferlens.analysis.cka_stats import cka_bootstrap
        from transferlens.capture import capture_pair

        data = [{"id": r["id"], "language": lang, "text": r[lang]}
                for r in test for lang in ("sv", "en")]
        pair = capture_pair(base, adapted, data, ["embed", "resid_post"], select="mean",
                            out=workdir / "acts")
        sites = pair.base.sites
        language = pair.base.rows["language"].to_numpy()

        per_layer = AnalysisResult("similarity", "cka_base_adapted", "linear_cka",
                                   models={"base": base.fingerprint, "adapted": adapted.fingerprint})
        for lang in ("sv", "en"):
            rows = np.flatnonzero(language == lang)
            for layer, site in enumerate(sites):
                X = np.asarray(pair.base.read(site))[rows]
                Y = np.asarray(pair.adapted.read(site))[rows]
                ci = cka_bootstrap(X, Y, n_boot=1000, seed=0)
                per_layer.add(ci.value, ci=ci.ci, n=len(rows), language=lang, layer=layer)

        for r in per_layer.records:
            print(f"{r['language']} layer {r['layer']}: CKA {r['value']:.3f} "
                  f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        assert len(per_layer.records) == 2 * (base.n_layers + 1)
        for r in per_layer.records:
            assert 0.0 <= r["ci_low"] <= r["ci_high"] <= 1.0
            assert r["value"] < 0.9999  # full fine-tuning changed every layer
        """
    ),
    code(
        """
        from transferlens.report.figures import cka_per_layer_figure

        cka_per_layer_figure(per_layer, get_style("paper"))
        """
    ),
    md(
        """
        `transferlens compare base.pt adapted.pt` runs these analyses and more (probes, patching,
        logit lens, weight changes) on such a pair and writes a report folder.
        """
    ),
    code(
        """
        shutil.rmtree(workdir)
        """
    ),
]

NOTEBOOKS = {
    "quickstart": QUICKSTART,
    "probing": PROBING,
    "similarity": SIMILARITY,
    "patching": PATCHING,
    "training": TRAINING,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (no outputs, deterministic cell ids)."""
    cells = []
    for i, (kind, source) in enumerate(NOTEBOOKS[name]):
        make = new_code_cell if kind == "code" else new_markdown_cell
        cell = make(source)
        cell["id"] = f"{name}-{i:02d}"
        cells.append(cell)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = dict(LANGUAGE_INFO)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The ``.ipynb`` text of notebook ``name``."""
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the files are current")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = args.out / f"{name}.ipynb"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        sys.stderr.write(
            f"out of date: {', '.join(stale)}; run python notebooks/build_notebooks.py\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
