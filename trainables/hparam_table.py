"""The table of every hyperparameter, declared once (``HPARAMS``): default, allowed values, default
search range, phase, doc; the lookups the CLI and the spaces use (``choices_of``, ``default_of``)
and the docs' parameter table rendered from it (``markdown_table``). Read it through
``trainables.hparams``.
"""

from typing import Any

from trainables.hparam_kinds import (ALL_FAMILIES, BILSTM, CONTRASTIVE, ENCODERS, FINETUNE, MULTITASK,
                                     TFIDF, HParam, _num)
from trainables.ranges import Categorical, Fixed, FloatRange, IntRange

# every trial's robustness check: keyboard typos in 10 % of the words, 5 % of the letters deleted
DEFAULT_PERTURB_EVAL = "typo:0.1,delete:0.05"


def _p(name: str, kind: str, default: Any, doc: str, phase: str, **rules: Any) -> HParam:
    return HParam(name, kind, default, doc, phase, **rules)


SGD_ONLY = {"optimizer": ("sgd",)}
TWO_STAGE = {"mode": ("two-stage", "two-stage-finetune")}
AUGMENTED = {"augmentation": ("word_deletion", "span_cutoff", "shuffle")}
WITH_BILSTM = ENCODERS + BILSTM  # the loop settings a BiLSTM trial shares with the encoders

# Default search ranges follow the BERT fine-tuning literature: learning rate 1e-5..3e-4 on a
# log scale (Devlin et al. 2019 searched 2e-5..5e-5; Mosbach et al. 2021 and Sun et al. 2019 go
# higher for small encoders), LLRD decay 0.7..1.0 (Sun et al. 2019 use 0.95; Zhang et al. 2021
# ~0.9), warm-up 0..30 % of the steps, dropout 0..0.5, batch 16..128, weight decay 0..0.1, label
# smoothing 0..0.2. Contrastive: temperature log 0.02..1 (SupCon and SimCLR both report strong
# dependence on it, good values 0.05..0.5), contrastive batch 32..256 (more negatives help),
# 1..5 contrastive epochs, joint lambda log 0.05..1 (Gunel et al. 2021 use 0.1..0.9).
_DECLARED: tuple[HParam, ...] = (
    # ---- run (sweep-level)
    _p("trainable", "str", "finetune", "what a trial trains: fine-tuning, contrastive "
       "pretraining + classifier, a cheap baseline from scratch (tfidf: TF-IDF + logistic "
       "regression; bilstm: a BiLSTM with attention pooling; docs/baselines.md), or multitask "
       "(one encoder, a sentence head and a token-tagging head)",
       "run", families=ALL_FAMILIES, choices=ALL_FAMILIES),
    _p("model", "str", "minilm-l6", "hub id, local folder or alias (minilm-l6: the packaged "
       "all-MiniLM-L6-v2); the baselines use its tokenizer only", "run", families=ALL_FAMILIES),
    _p("max_length", "int", 128, "texts are truncated to this many tokens", "run",
       families=ALL_FAMILIES, low=8, high=8192),
    _p("epochs", "int", 4, "epochs of the classification stage (ASHA's max_t for fine-tuning; "
       "contrastive trials add their contrastive epochs; tfidf trials fit once, one epoch)", "run",
       families=ALL_FAMILIES, low=1, high=10_000),
    _p("eval_every", "optional_str", None, "evaluate, report and checkpoint every N optimizer "
       "steps (N or 'N steps') or N examples ('Nex' or 'N examples', steps = ceil(N / batch_size)) "
       "instead of every epoch; rounds cross epoch boundaries and `epoch`, `stop_epoch`, "
       "`best_epoch` and ASHA's rungs count rounds (null or 0: per epoch; fine-tuning trials "
       "only; docs/tune.md#budgets-in-steps)", "run", families=ALL_FAMILIES),
    _p("seed", "int", 0, "seed of the model's initialisation, data order and dropout", "run",
       families=ALL_FAMILIES, low=0, high=2**32 - 1),
    _p("precision", "str", "auto", "auto: bf16 autocast on Ampere+ GPUs and CPUs with "
       "AVX512-BF16/AMX, fp16 on older GPUs, else fp32 (the baselines: always fp32)", "run",
       families=ALL_FAMILIES, choices=("auto", "fp32", "bf16", "fp16")),
    # ---- optimizer
    _p("lr", "float", 1e-4, "learning rate of the top encoder layer", "optimizer", low=0.0,
       high=10.0, low_open=True, search=FloatRange(1e-5, 3e-4, log=True)),
    _p("optimizer", "str", "adamw", "adamw (fused where available) or sgd", "optimizer",
       choices=("adamw", "sgd")),
    _p("momentum", "float", 0.9, "SGD momentum", "optimizer", low=0.0, high=0.9999,
       when=SGD_ONLY),
    _p("nesterov", "bool", False, "Nesterov momentum (SGD with momentum > 0 only)", "optimizer",
       when=SGD_ONLY),
    _p("weight_decay", "float", 0.01, "decoupled weight decay, never on biases and LayerNorm",
       "optimizer", low=0.0, high=1.0, search=FloatRange(0.0, 0.1)),
    _p("llrd_decay", "float", 1.0, "layer-wise LR decay: layer l below the top trains at "
       "lr * decay**l, the embeddings lowest", "optimizer", low=0.0, high=1.0, low_open=True,
       search=FloatRange(0.7, 1.0)),
    _p("head_lr_multiplier", "float", 1.0, "the classification head trains at lr * this",
       "optimizer", low=0.0, high=10_000.0, low_open=True, search=FloatRange(1.0, 100.0, log=True)),
    # ---- schedule
    _p("scheduler", "str", "linear", "learning-rate schedule after warm-up", "schedule",
       choices=("linear", "cosine", "constant"), search=Categorical(("linear", "cosine", "constant"))),
    _p("warmup_ratio", "float", 0.1, "share of the steps spent warming up linearly", "schedule",
       low=0.0, high=0.9, search=FloatRange(0.0, 0.3)),
    _p("min_lr", "float", 0.0, "the schedule ends at this learning rate (<= lr)", "schedule",
       low=0.0, high=10.0),
    # ---- loop
    _p("batch_size", "int", 32, "examples per optimizer step", "loop", families=WITH_BILSTM,
       low=1, high=65536, search=Categorical((16, 32, 64, 128))),
    _p("stop_epoch", "optional_int", None, "stop after this epoch while keeping the schedule of "
       "`epochs` (set by `tunebert best` to the epoch that produced the score, so retraining "
       "reproduces that model)", "loop", families=ALL_FAMILIES, low=1, high=10_000),
    _p("grad_clip", "float", 1.0, "gradient-norm clipping (0 disables it)", "loop",
       families=WITH_BILSTM, low=0.0, high=1e6, search=Fixed(1.0)),
    _p("label_smoothing", "float", 0.0, "label smoothing of the cross-entropy", "loop", low=0.0,
       high=0.9, search=FloatRange(0.0, 0.2)),
    _p("freeze_embeddings", "bool", False, "keep the word/position embeddings frozen", "loop"),
    _p("freeze_layers", "int", 0, "freeze the bottom k encoder layers", "loop", low=0, high=1000),
    _p("reinit_layers", "int", 0, "re-initialise the top k encoder layers", "loop", low=0, high=1000),
    # ---- model
    _p("pooling", "str", "mean", "sentence embedding: [CLS] token, mean or max over tokens",
       "model", choices=("cls", "mean", "max"), search=Categorical(("cls", "mean", "max"))),
    _p("head", "str", "linear", "classification head: linear, an MLP with one hidden layer, or "
       "norm_gelu (dropout, LayerNorm, GELU, projection)", "model",
       choices=("linear", "mlp", "norm_gelu"), search=Categorical(("linear", "mlp"))),
    _p("head_hidden", "int", 256, "hidden units of the MLP head", "model", low=1, high=1_000_000,
       search=IntRange(16, 512, log=True), when={"head": ("mlp",)}),
    _p("classifier_dropout", "float", 0.1, "dropout in front of the head", "model", low=0.0,
       high=0.99, search=FloatRange(0.0, 0.5)),
    _p("hidden_dropout", "optional_float", None, "encoder hidden dropout (null keeps the "
       "pretrained value)", "model", low=0.0, high=0.99),
    _p("attention_dropout", "optional_float", None, "encoder attention dropout (null keeps the "
       "pretrained value)", "model", low=0.0, high=0.99),
    _p("num_layers", "int", 0, "keep only the bottom k layers of the pretrained encoder (0 = all): "
       "a smaller, faster model, usually less accurate; the model folder records the truncated "
       "encoder", "model", low=0, high=1000),
    _p("quantize", "bool", False, "dynamic int8 quantization of the Linear layers for CPU "
       "inference (torch.ao.quantization.quantize_dynamic) of the handed-over model: training "
       "and val_accuracy stay fp32, size and latency are the int8 model's, the last epoch "
       "reports its val_accuracy_int8, and loading a model folder quantizes again", "model",
       families=FINETUNE),
    # ---- recipe knobs (fine-tuning trials)
    _p("ema_decay", "float", 0.0, "exponential moving average of the weights, updated every "
       "step; evaluated and saved with the averaged weights (0 = off; 0.999 is typical)", "recipe",
       families=FINETUNE, low=0.0, high=0.99999),
    _p("swa_epochs", "int", 0, "stochastic weight averaging: the mean of the weights at the end "
       "of each of the last k epochs, evaluated and saved (0 = off)", "recipe", families=FINETUNE,
       low=0, high=10_000),
    _p("rdrop_alpha", "float", 0.0, "R-Drop (Liang et al. 2021): weight of the symmetric KL "
       "between two dropout passes (0 = off; 1..5 is typical)", "recipe", families=FINETUNE,
       low=0.0, high=100.0),
    _p("supcon_lambda", "float", 0.0, "joint SupCon (Gunel et al. 2021): cross-entropy + lambda * "
       "SupCon on the pooled embeddings of two dropout views (0 = off)", "recipe",
       families=FINETUNE, low=0.0, high=100.0),
    _p("supcon_temperature", "float", 0.1, "temperature of the joint SupCon term", "recipe",
       families=FINETUNE, low=0.0, high=10.0, low_open=True),
    _p("perturb_train", "optional_str", None, "typo-robust training: perturb training texts as "
       "KIND:RATE[,KIND:RATE...] (as perturb_eval; drawn afresh each epoch, seeded; null = off)",
       "recipe", families=FINETUNE),
    _p("perturb_train_prob", "float", 0.5, "with perturb_train: the share of training examples "
       "perturbed each epoch", "recipe", families=FINETUNE, low=0.0, high=1.0),
    _p("distill_teacher", "optional_str", None, "knowledge distillation (Hinton et al. 2015): "
       "a teacher model folder (a model or an ensemble, sharing the student's tokenizer); the "
       "student trains on distill_alpha * T^2 * KL to its probabilities softened at "
       "distill_temperature + (1 - distill_alpha) * cross-entropy; the teacher's probabilities "
       "are computed once and cached in its folder (null = off)", "recipe", families=FINETUNE),
    _p("distill_temperature", "float", 2.0, "with distill_teacher: the temperature T that "
       "softens the teacher's and the student's probabilities", "recipe", families=FINETUNE,
       low=0.0, high=20.0, low_open=True),
    _p("distill_alpha", "float", 0.5, "with distill_teacher: weight of the teacher term (1 - it "
       "weighs the cross-entropy on the labels; 0: the labels alone, 1: the teacher alone)",
       "recipe", families=FINETUNE, low=0.0, high=1.0),
    # ---- contrastive
    _p("mode", "str", "two-stage", "two-stage (contrastive, then a classifier on the frozen "
       "encoder), two-stage-finetune, or joint (CE + lambda * SupCon)", "contrastive",
       families=CONTRASTIVE, choices=("two-stage", "two-stage-finetune", "joint"),
       search=Categorical(("two-stage", "two-stage-finetune", "joint"))),
    _p("loss", "str", "supcon", "contrastive loss: SupCon (labels) or SimCLR/NT-Xent (views)",
       "contrastive", families=CONTRASTIVE, choices=("supcon", "simclr"),
       search=Categorical(("supcon", "simclr")), when=TWO_STAGE),
    _p("temperature", "float", 0.1, "temperature of the contrastive loss", "contrastive",
       families=CONTRASTIVE, low=0.0, high=10.0, low_open=True, search=FloatRange(0.02, 1.0, log=True)),
    _p("joint_lambda", "float", 0.5, "weight of SupCon in joint mode", "contrastive",
       families=CONTRASTIVE, low=0.0, high=100.0, search=FloatRange(0.05, 1.0, log=True),
       when={"mode": ("joint",)}),
    _p("projection_dim", "int", 128, "output size of the projection head", "contrastive",
       families=CONTRASTIVE, low=1, high=65536, search=Categorical((64, 128, 256))),
    _p("contrastive_epochs", "int", 3, "epochs of the contrastive stage (0 only in joint mode)",
       "contrastive", families=CONTRASTIVE, low=0, high=10_000, search=IntRange(1, 5), when=TWO_STAGE),
    _p("contrastive_optimizer", "str", "adamw", "optimizer of the contrastive stage", "contrastive",
       families=CONTRASTIVE, choices=("adamw", "sgd")),
    _p("contrastive_lr", "float", 1e-4, "learning rate of the contrastive stage", "contrastive",
       families=CONTRASTIVE, low=0.0, high=10.0, low_open=True,
       search=FloatRange(1e-5, 3e-4, log=True), when=TWO_STAGE),
    _p("contrastive_batch_size", "int", 64, "batch of the contrastive stage (more negatives "
       "per batch)", "contrastive", families=CONTRASTIVE, low=2, high=65536,
       search=Categorical((32, 64, 128, 256)), when=TWO_STAGE),
    _p("augmentation", "str", "none", "text noise on top of the dropout views (SimCSE)",
       "contrastive", families=CONTRASTIVE, choices=("none", "word_deletion", "span_cutoff", "shuffle"),
       search=Categorical(("none", "word_deletion", "span_cutoff", "shuffle"))),
    _p("augmentation_strength", "float", 0.1, "share of tokens the augmentation touches",
       "contrastive", families=CONTRASTIVE, low=0.0, high=0.5, search=FloatRange(0.05, 0.3),
       when=AUGMENTED),
    _p("knn_k", "int", 10, "neighbours of the k-NN validation signal during the contrastive stage",
       "contrastive", families=CONTRASTIVE, low=1, high=1000),
    # ---- multi-task trials (joint intent + slot)
    _p("intent_loss_weight", "float", 1.0, "weight of the sentence (intent) cross-entropy in the "
       "joint loss", "multitask", families=MULTITASK, low=0.0, high=100.0,
       search=FloatRange(0.5, 2.0, log=True)),
    _p("slot_loss_weight", "float", 1.0, "weight of the token (slot) cross-entropy in the joint "
       "loss", "multitask", families=MULTITASK, low=0.0, high=100.0,
       search=FloatRange(0.5, 4.0, log=True)),
    _p("slot_head", "str", "linear", "token head: linear, an MLP with `head_hidden` units, or "
       "norm_gelu (dropout, LayerNorm, GELU, projection)", "multitask", families=MULTITASK,
       choices=("linear", "mlp", "norm_gelu"), search=Categorical(("linear", "norm_gelu"))),
    _p("slot_lr_multiplier", "float", 1.0, "the token head trains at lr * this (the sentence head "
       "at lr * head_lr_multiplier)", "multitask", families=MULTITASK, low=0.0, high=10_000.0,
       low_open=True, search=FloatRange(1.0, 100.0, log=True)),
    _p("freeze", "str", "none", "keep a part frozen for the whole run: none, the whole encoder "
       "(backbone), or one task head (intent_head, slot_head); bottom layers: freeze_layers",
       "multitask", families=MULTITASK, choices=("none", "backbone", "intent_head", "slot_head")),
    _p("unfreeze_every", "int", 0, "gradual top-down unfreezing: the top encoder layer trains "
       "first and one more layer joins every N epochs, the embeddings last (0 = off)", "multitask",
       families=MULTITASK, low=0, high=1000),
    _p("sentence_norm", "str", "none", "normalise the pooled sentence embedding before the "
       "sentence head: none, l1 or l2", "multitask", families=MULTITASK, choices=("none", "l1", "l2")),
    _p("task_mixing", "str", "proportional", "two datasets: how their batches mix (each batch "
       "holds one dataset): proportional (every batch once, in random order), round_robin "
       "(alternating, the smaller dataset repeating), capped (alternating, as many batches of each "
       "as the smaller has)", "multitask", families=MULTITASK,
       choices=("proportional", "round_robin", "capped")),
    # ---- cheap baselines (docs/baselines.md). TF-IDF ranges follow the usual logistic-regression
    # grids (C log 0.01..100; uni- to trigrams; min_df 1..3); the BiLSTM's are those of small
    # recurrent text classifiers trained from scratch (Adam at 3e-4..1e-2, 64..256 units).
    _p("tfidf_c", "float", 1.0, "inverse L2 regularisation strength C of the logistic regression "
       "on the TF-IDF features (smaller: stronger regularisation)", "baseline", families=TFIDF,
       low=0.0, high=1e6, low_open=True, search=FloatRange(0.01, 100.0, log=True)),
    _p("tfidf_ngram_max", "int", 2, "features are the word-piece n-grams of length 1..this",
       "baseline", families=TFIDF, low=1, high=5, search=IntRange(1, 3)),
    _p("tfidf_sublinear_tf", "bool", True, "term frequency as 1 + log(count) instead of the count",
       "baseline", families=TFIDF, search=Categorical((True, False))),
    _p("tfidf_min_df", "int", 1, "keep only n-grams that occur in at least this many training "
       "texts", "baseline", families=TFIDF, low=1, high=1_000_000, search=IntRange(1, 3)),
    _p("tfidf_class_weight", "str", "none", "class weights of the logistic regression: none, or "
       "balanced (inversely proportional to the class frequencies)", "baseline", families=TFIDF,
       choices=("none", "balanced"), search=Categorical(("none", "balanced"))),
    _p("bilstm_lr", "float", 2e-3, "learning rate (AdamW, constant) of the BiLSTM; trained from "
       "scratch it wants ~10x an encoder's", "baseline", families=BILSTM, low=0.0, high=10.0,
       low_open=True, search=FloatRange(3e-4, 1e-2, log=True)),
    _p("bilstm_embedding_dim", "int", 128, "size of the token embeddings (over the tokenizer's "
       "vocabulary, trained from scratch)", "baseline", families=BILSTM, low=1, high=4096,
       search=Categorical((64, 128, 256))),
    _p("bilstm_hidden", "int", 128, "hidden units of the LSTM per direction", "baseline",
       families=BILSTM, low=1, high=4096, search=Categorical((64, 128, 256))),
    _p("bilstm_layers", "int", 1, "stacked bidirectional LSTM layers", "baseline",
       families=BILSTM, low=1, high=8, search=IntRange(1, 2)),
    _p("bilstm_dropout", "float", 0.2, "dropout on the embeddings, between LSTM layers and in front "
       "of the head", "baseline", families=BILSTM, low=0.0, high=0.9, search=FloatRange(0.0, 0.5)),
    # ---- evaluation
    _p("perturb_eval", "optional_str", DEFAULT_PERTURB_EVAL, "also evaluate the validation split "
       "with perturbed texts and report val_accuracy_perturbed every epoch (a contrastive trial: "
       "every classifier epoch; rank with --metric val_accuracy_perturbed, fine-tuning sweeps): "
       "KIND:RATE[,KIND:RATE...] (kinds in trainables/perturb.py; null = off)", "eval",
       families=ALL_FAMILIES),
    _p("deploy_metrics", "bool", True, "time the trial's model on the CPU once, before its "
       "first epoch, and report the timings with every epoch (latency_ms_p50/p95 at batch 1, "
       "throughput_b32; a few seconds per trial); false skips the timing, sizes and memory are "
       "still reported", "eval", families=ALL_FAMILIES),
    # ---- provenance
    _p("preset", "optional_str", None, "the named preset this config came from, if any", "run",
       families=ALL_FAMILIES),
)

HPARAMS: dict[str, HParam] = {p.name: p for p in _DECLARED}
SWEEP_LEVEL = tuple(p.name for p in _DECLARED if p.phase == "run" and p.name != "preset")


def choices_of(name: str) -> tuple:
    """The allowed values of a categorical parameter (for CLI ``choices=``)."""
    choices = HPARAMS[name].choices
    if choices is None:
        raise KeyError(f"{name} is not a categorical parameter")
    return choices


def default_of(name: str) -> Any:
    return HPARAMS[name].default


def params_of_family(family: str) -> tuple[HParam, ...]:
    return tuple(p for p in _DECLARED if family in p.families)



# --------------------------------------------------------------------------- docs


def markdown_table() -> str:
    """The README's parameter table, rendered from ``HPARAMS``."""
    rows = ["| parameter | default | allowed | default search | phase | applies to | what it does |",
            "|---|---|---|---|---|---|---|"]
    for p in _DECLARED:
        if p.name == "preset":
            continue
        search = "—"
        if p.search is not None:
            d = p.search.describe()
            search = (str(d) if not isinstance(d, dict) else
                      " \\| ".join(str(c) for c in d["choices"]) if "choices" in d else
                      f"{_num(d['low'])}..{_num(d['high'])}" + (" log" if d.get("log") else ""))
            if p.when:
                search += " (when " + ", ".join(f"{k} {' / '.join(map(str, v))}" for k, v in p.when.items()) + ")"
        if p.phase == "run":
            search = "sweep setting"
        default = "null" if p.default is None else str(p.default).lower() if isinstance(p.default, bool) else _num(p.default)
        rows.append(f"| `{p.name}` | {default} | {p.allowed()} | {search} | {p.phase} | "
                    f"{', '.join(p.families)} | {p.doc} |")
    return "\n".join(rows) + "\n"
