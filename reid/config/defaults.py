"""Default config: every key of FastReID's config reference, with the same default and meaning.

Keys marked "(reid)" are additions of this project; everything else is FastReID's contract.
"""
from reid.config.node import CfgNode as CN

_C = CN()

# -----------------------------------------------------------------------------
# MODEL
# -----------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.DEVICE = "cuda"
_C.MODEL.META_ARCHITECTURE = "Baseline"
_C.MODEL.FREEZE_LAYERS = [""]
# MoCo memory size
_C.MODEL.QUEUE_SIZE = 8192

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
_C.MODEL.BACKBONE.DEPTH = "50x"
_C.MODEL.BACKBONE.LAST_STRIDE = 1
# Backbone feature dimension
_C.MODEL.BACKBONE.FEAT_DIM = 2048
# Normalization method for the convolution layers.
_C.MODEL.BACKBONE.NORM = "BN"
_C.MODEL.BACKBONE.WITH_IBN = False
_C.MODEL.BACKBONE.WITH_SE = False
_C.MODEL.BACKBONE.WITH_NL = False
# Use ImageNet weights: read from PRETRAIN_PATH or torch's cache, downloaded only where the
# machine can; otherwise training starts from scratch with a warning.
_C.MODEL.BACKBONE.PRETRAIN = True
_C.MODEL.BACKBONE.PRETRAIN_PATH = ""
# Vision-transformer and regularisation keys of FastReID 1.4 (used by the backbones that have them).
_C.MODEL.BACKBONE.DROP_RATIO = 0.0
_C.MODEL.BACKBONE.DROP_PATH_RATIO = 0.1
_C.MODEL.BACKBONE.ATT_DROP_RATE = 0.0
_C.MODEL.BACKBONE.STRIDE_SIZE = [16, 16]
_C.MODEL.BACKBONE.SIE_COE = 3.0
# (reid) Cameras of the ViT side-information embedding (TransReID); 0 = off, as in FastReID.
_C.MODEL.BACKBONE.SIE_CAMERAS = 0

_C.MODEL.HEADS = CN()
_C.MODEL.HEADS.NAME = "EmbeddingHead"
_C.MODEL.HEADS.NORM = "BN"
# Number of identities; 0 = taken from the training set
_C.MODEL.HEADS.NUM_CLASSES = 0
# Embedding dimension in head; 0 = no embedding layer
_C.MODEL.HEADS.EMBEDDING_DIM = 0
_C.MODEL.HEADS.WITH_BNNECK = True
# Triplet feature using feature before(after) bnneck
_C.MODEL.HEADS.NECK_FEAT = "before"
_C.MODEL.HEADS.POOL_LAYER = "avgpool"
_C.MODEL.HEADS.CLS_LAYER = "linear"
# Margin and Scale for margin-based classification layer
_C.MODEL.HEADS.MARGIN = 0.15
_C.MODEL.HEADS.SCALE = 128

_C.MODEL.LOSSES = CN()
_C.MODEL.LOSSES.NAME = ("CrossEntropyLoss",)

# if epsilon == 0: no label smoothing; if epsilon == -1: adaptive label smoothing
_C.MODEL.LOSSES.CE = CN()
_C.MODEL.LOSSES.CE.EPSILON = 0.0
_C.MODEL.LOSSES.CE.ALPHA = 0.2
_C.MODEL.LOSSES.CE.SCALE = 1.0

_C.MODEL.LOSSES.FL = CN()
_C.MODEL.LOSSES.FL.ALPHA = 0.25
_C.MODEL.LOSSES.FL.GAMMA = 2
_C.MODEL.LOSSES.FL.SCALE = 1.0

_C.MODEL.LOSSES.TRI = CN()
_C.MODEL.LOSSES.TRI.MARGIN = 0.3
_C.MODEL.LOSSES.TRI.NORM_FEAT = False
_C.MODEL.LOSSES.TRI.HARD_MINING = True
_C.MODEL.LOSSES.TRI.SCALE = 1.0

_C.MODEL.LOSSES.CIRCLE = CN()
_C.MODEL.LOSSES.CIRCLE.MARGIN = 0.25
_C.MODEL.LOSSES.CIRCLE.GAMMA = 128
_C.MODEL.LOSSES.CIRCLE.SCALE = 1.0

_C.MODEL.LOSSES.COSFACE = CN()
_C.MODEL.LOSSES.COSFACE.MARGIN = 0.25
_C.MODEL.LOSSES.COSFACE.GAMMA = 128
_C.MODEL.LOSSES.COSFACE.SCALE = 1.0

# Path to a checkpoint file to be loaded to the model.
_C.MODEL.WEIGHTS = ""

# Image normalisation, applied inside the model (inputs are 0..255)
_C.MODEL.PIXEL_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
_C.MODEL.PIXEL_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]

# -----------------------------------------------------------------------------
# KNOWLEDGE DISTILLATION
# -----------------------------------------------------------------------------
_C.KD = CN()
_C.KD.MODEL_CONFIG = ""
_C.KD.MODEL_WEIGHTS = ""
# (reid) logit distillation loss: "kl" or "js" (Jensen-Shannon), its temperature and weight
_C.KD.LOSS = "kl"
_C.KD.TEMPERATURE = 4.0
_C.KD.SCALE = 1.0
# (reid) feature "overhaul" distillation (Heo et al., ICCV 2019) between backbone outputs; 0 = off
_C.KD.OVERHAUL_SCALE = 0.0
# (FastReID 1.4) EMA self-distillation: the teacher is an exponential moving average of the student
_C.KD.EMA = CN()
_C.KD.EMA.ENABLED = False
_C.KD.EMA.MOMENTUM = 0.999

# -----------------------------------------------------------------------------
# INPUT
# -----------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.SIZE_TRAIN = [256, 128]
_C.INPUT.SIZE_TEST = [256, 128]

_C.INPUT.DO_FLIP = True
_C.INPUT.FLIP_PROB = 0.5

_C.INPUT.DO_PAD = True
_C.INPUT.PADDING_MODE = "constant"
_C.INPUT.PADDING = 10

_C.INPUT.CJ = CN()
_C.INPUT.CJ.ENABLED = False
_C.INPUT.CJ.PROB = 0.5
_C.INPUT.CJ.BRIGHTNESS = 0.15
_C.INPUT.CJ.CONTRAST = 0.15
_C.INPUT.CJ.SATURATION = 0.1
_C.INPUT.CJ.HUE = 0.1

_C.INPUT.DO_AFFINE = False

_C.INPUT.DO_AUTOAUG = False
_C.INPUT.AUTOAUG_PROB = 0.0

_C.INPUT.DO_AUGMIX = False
_C.INPUT.AUGMIX_PROB = 0.0

_C.INPUT.REA = CN()
_C.INPUT.REA.ENABLED = False
_C.INPUT.REA.PROB = 0.5
_C.INPUT.REA.VALUE = [0.485 * 255, 0.456 * 255, 0.406 * 255]

_C.INPUT.RPT = CN()
_C.INPUT.RPT.ENABLED = False
_C.INPUT.RPT.PROB = 0.5
# Random resized crop (FastReID 1.4 INPUT.CROP.*).
_C.INPUT.CROP = CN()
_C.INPUT.CROP.ENABLED = False
_C.INPUT.CROP.SIZE = [224]
_C.INPUT.CROP.SCALE = [0.16, 1.0]
_C.INPUT.CROP.RATIO = [3.0 / 4.0, 4.0 / 3.0]

# -----------------------------------------------------------------------------
# Dataset
# -----------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.NAMES = ("Market1501",)
_C.DATASETS.TESTS = ("Market1501",)
_C.DATASETS.COMBINEALL = False
# (reid) the datasets root; relative paths are relative to the working directory
_C.DATASETS.ROOT = "data"
# (reid) how `reid prepare` checks every image of the datasets before training: "header" (PIL
# reads the header; a JPEG / PNG must end with its end marker: finds truncated files and
# non-images in seconds), "decode" (also decodes every image: slower, finds corrupt data
# inside whole files) or "none"
_C.DATASETS.CHECK_IMAGES = "header"
# (reid) the procedural synthetic person set (dataset name "SyntheticMarket1501")
_C.DATASETS.SYNTHETIC = CN()
_C.DATASETS.SYNTHETIC.SEED = 0
_C.DATASETS.SYNTHETIC.NUM_TRAIN_IDS = 100
_C.DATASETS.SYNTHETIC.NUM_TEST_IDS = 100
_C.DATASETS.SYNTHETIC.NUM_CAMERAS = 6
_C.DATASETS.SYNTHETIC.IMAGES_PER_ID = 12
_C.DATASETS.SYNTHETIC.NUM_DISTRACTORS = 50
_C.DATASETS.SYNTHETIC.NUM_JUNK = 30
_C.DATASETS.SYNTHETIC.SIZE = [128, 64]
# (reid) "standard" or "hard" (shared clothing colours, more occlusion and jitter)
_C.DATASETS.SYNTHETIC.DIFFICULTY = "standard"

# -----------------------------------------------------------------------------
# DataLoader
# -----------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.PK_SAMPLER = True
_C.DATALOADER.NAIVE_WAY = True
# Number of instance for each person (K of P x K)
_C.DATALOADER.NUM_INSTANCE = 4
_C.DATALOADER.NUM_WORKERS = 8
# (FastReID 1.4) Training sampler by name; "" keeps the seed's PK_SAMPLER / NAIVE_WAY choice.
# TrainingSampler, NaiveIdentitySampler, BalancedIdentitySampler, SetReWeightSampler,
# ImbalancedDatasetSampler.
_C.DATALOADER.SAMPLER_TRAIN = ""
# (FastReID 1.4) Per-set weights for SetReWeightSampler, one per DATASETS.NAMES entry.
_C.DATALOADER.SET_WEIGHT = []

# ---------------------------------------------------------------------------- #
# Solver
# ---------------------------------------------------------------------------- #
_C.SOLVER = CN()
_C.SOLVER.FP16_ENABLED = False
# (reid) train under bfloat16 autocast instead (CPU and CUDA; no loss scaling needed). Where the
# device has no native bf16 (a CPU without AVX-512 BF16 / AMX, a GPU before Ampere) it is
# ignored with a warning: emulated bf16 is slower than float32. Not with FP16_ENABLED.
_C.SOLVER.BF16_ENABLED = False
# (reid) train the model in the channels_last memory format (its 4-D weights, hence the
# activations): on a CPU with AMX it makes bf16 training ~1.2x faster per CPU second
# (benchmarks/train_throughput.py); no gain in float32 there. Same arithmetic, other rounding.
_C.SOLVER.CHANNELS_LAST = False
# (reid) torch's fused optimizer implementation (``fused=True``: one kernel per parameter
# instead of one per operation; Adam, AdamW, SGD, Adagrad ... on CPU and CUDA). Same update,
# other rounding. An optimizer without one is refused.
_C.SOLVER.FUSED = False
_C.SOLVER.OPT = "Adam"
_C.SOLVER.MAX_EPOCH = 120
_C.SOLVER.BASE_LR = 3e-4
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.HEADS_LR_FACTOR = 1.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = True
_C.SOLVER.WEIGHT_DECAY = 0.0005
_C.SOLVER.WEIGHT_DECAY_BIAS = 0.0
# (FastReID 1.4) Weight decay of normalisation-layer weights and biases.
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0005
# (FastReID 1.4) Gradient clipping: CLIP_TYPE "value" or "norm".
_C.SOLVER.CLIP_GRADIENTS = CN()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 5.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

_C.SOLVER.SCHED = "MultiStepLR"
_C.SOLVER.DELAY_EPOCHS = 0
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = [30, 55]
_C.SOLVER.ETA_MIN_LR = 1e-7

_C.SOLVER.WARMUP_FACTOR = 0.1
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"

_C.SOLVER.FREEZE_ITERS = 0
_C.SOLVER.FREEZE_FC_ITERS = 0

# Save a checkpoint every CHECKPOINT_PERIOD epochs (and always at the end)
_C.SOLVER.CHECKPOINT_PERIOD = 20
# (reid) also a training checkpoint (model_iter_XXXXXXX.pth) every CHECKPOINT_PERIOD_ITERS
# iterations and whenever CHECKPOINT_PERIOD_MINUTES minutes of wall-clock have passed since the
# last one (0 = off): long epochs on machines that may be preempted lose little
_C.SOLVER.CHECKPOINT_PERIOD_ITERS = 0
_C.SOLVER.CHECKPOINT_PERIOD_MINUTES = 0.0
# (reid) periodic checkpoints kept in OUTPUT_DIR (0 = all): an older one is deleted once the new
# one is in place; model_final.pth and model_best.pth are never deleted
_C.SOLVER.CHECKPOINT_KEEP = 2
# (reid) which weights the train and precise-BN stages log to MLflow, as model-only copies
# ({"model": state_dict}): "final" (model_final.pth, model_best.pth, model_precise_bn.pth),
# "all" (also the periodic checkpoints this run wrote) or "none". Full checkpoints, with
# optimizer state for resuming, stay in OUTPUT_DIR only.
_C.SOLVER.LOG_CHECKPOINTS = "final"
# Number of images per batch across all processes
_C.SOLVER.IMS_PER_BATCH = 64
# (reid) log loss, LR and throughput every LOG_PERIOD iterations
_C.SOLVER.LOG_PERIOD = 20

_C.TEST = CN()
_C.TEST.EVAL_PERIOD = 20
# (reid) the metric of the periodic evaluations that picks model_best.pth (higher is better):
# "<metric>" of the first of DATASETS.TESTS (mAP, Rank-1, ...) or "<test set>.<metric>"
_C.TEST.BEST_METRIC = "mAP"
# Number of images per batch in one process.
_C.TEST.IMS_PER_BATCH = 64
_C.TEST.METRIC = "cosine"
_C.TEST.ROC_ENABLED = False
_C.TEST.FLIP_ENABLED = False
# (reid) extract features under bfloat16 autocast: on the CPU about 3x faster where it has
# native bf16 (AVX-512 BF16 / AMX; elsewhere ignored with a warning, as SOLVER.BF16_ENABLED),
# features within cosine 0.9999 of float32, the same mAP (benchmarks/inference_throughput.py)
_C.TEST.BF16 = False
# (reid) rank protocol for every test set ("market" | "cuhk03"); "" = each dataset's own
_C.TEST.PROTOCOL = ""
# (reid) false accept rates at which TAR is reported when ROC_ENABLED
_C.TEST.ROC_FARS = [1e-4, 1e-3, 1e-2]
# (reid) Keep the best / worst rank lists and sampled pair distances at evaluation
# (OUTPUT_DIR/examples/<test set>.json) for the evaluate stage's visual report.
_C.TEST.VISUALIZE = True

# (reid) how each query's gallery is ranked. "exact": every item (the default). A faiss factory
# string ("IVF1024,PQ64x4fs", "PCA64,IVF64,PQ32x4fs", "HNSW32", ...): approximate evaluation
# for galleries too large to rank whole: the metrics come from each query's top CANDIDATES
# (re-scored exactly) and are lower bounds of the exact ones; the candidates' recall against
# exact search is reported beside them (candidate_recall). Market protocol only, no ROC or
# re-ranking, no retrieval examples. PARAMS: faiss search parameters ("nprobe=32"); "" = by
# index type. "bf16": no faiss index: every gallery row scored in bfloat16 (AMX / AVX-512 BF16
# CPUs, Ampere+ GPUs; float32 with a warning elsewhere), the top candidates re-scored exactly
# (reid.retrieval.bf16_scan): nothing of the gallery skipped, so no positive lost to a
# partition; the fastest approximate type on Market+500k (benchmarks/RESULTS.md).
_C.TEST.INDEX = CN()
_C.TEST.INDEX.TYPE = "exact"
_C.TEST.INDEX.PARAMS = ""
_C.TEST.INDEX.CANDIDATES = 100

_C.TEST.AQE = CN()
_C.TEST.AQE.ENABLED = False
_C.TEST.AQE.ALPHA = 3.0
_C.TEST.AQE.QE_TIME = 1
_C.TEST.AQE.QE_K = 5

_C.TEST.RERANK = CN()
_C.TEST.RERANK.ENABLED = False
_C.TEST.RERANK.K1 = 20
_C.TEST.RERANK.K2 = 6
_C.TEST.RERANK.LAMBDA = 0.3

_C.TEST.PRECISE_BN = CN()
_C.TEST.PRECISE_BN.ENABLED = False
_C.TEST.PRECISE_BN.DATASET = "Market1501"  # (reid) "" = the first of DATASETS.NAMES
_C.TEST.PRECISE_BN.NUM_ITER = 300

# ---------------------------------------------------------------------------- #
# Misc options
# ---------------------------------------------------------------------------- #
_C.OUTPUT_DIR = "logs/"
_C.CUDNN_BENCHMARK = False
# (reid) seed for every random number generator; same seed, same run
_C.SEED = 0
# (reid) modules imported when the config is loaded, to register a user's own datasets,
# backbones, heads, ... with the registries (reid.utils.plugins)
_C.PLUGINS = []
# (reid) hooks added to the training's, as importable "module:Class" names; a class is built
# with the config when its __init__ takes an argument (cfg), else with none
_C.HOOKS = []
# (reid) TensorBoard event files of the training (scalars, images, histograms; evaluations
# during training) in OUTPUT_DIR: `tensorboard --logdir OUTPUT_DIR`; needs the tensorboard extra
_C.TENSORBOARD = CN()
_C.TENSORBOARD.ENABLED = False

# FastReID 1.4 spellings accepted in YAML files and overrides (old key -> key here).
KEY_ALIASES = {
    "SOLVER.AMP.ENABLED": "SOLVER.FP16_ENABLED",
    "SOLVER.AMP_ENABLED": "SOLVER.FP16_ENABLED",  # FastReID 1.0-1.3
    "INPUT.FLIP.ENABLED": "INPUT.DO_FLIP",
    "INPUT.FLIP.PROB": "INPUT.FLIP_PROB",
    "INPUT.PADDING.ENABLED": "INPUT.DO_PAD",
    "INPUT.PADDING.MODE": "INPUT.PADDING_MODE",
    "INPUT.PADDING.SIZE": "INPUT.PADDING",
    "INPUT.AFFINE.ENABLED": "INPUT.DO_AFFINE",
    "INPUT.AUTOAUG.ENABLED": "INPUT.DO_AUTOAUG",
    "INPUT.AUTOAUG.PROB": "INPUT.AUTOAUG_PROB",
    "INPUT.AUGMIX.ENABLED": "INPUT.DO_AUGMIX",
    "INPUT.AUGMIX.PROB": "INPUT.AUGMIX_PROB",
    "TEST.FLIP.ENABLED": "TEST.FLIP_ENABLED",
    "TEST.ROC.ENABLED": "TEST.ROC_ENABLED",
}
