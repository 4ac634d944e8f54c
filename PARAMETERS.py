"""Every knob of the pipeline, in one place.

Each stage script in scripts/ reads this file. To change a value for one run, give
`--set NAME=VALUE`: VALUE is read as a Python literal, else as a string. A text parameter takes a
number as typed (datasetName=2024 is the text "2024"), and refuses True, None or a list as a likely
slip unless quoted. `--params FILE` reads a file of your own (one per data set, say) that sets only
what it changes, on top of this one. The environment variable IMGCLASS_DATA_DIR overrides DATA_DIR;
`--set DATA_DIR=...` overrides both.

Values are validated when loaded (libraries/imgclass/params.py), so a typo fails at once with a
message that says what is allowed.
"""

import os

# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
DATA_DIR = os.path.join(os.path.expanduser("~"), "imgclass_data")  # root of images/, proc/, results/ (see above for overrides)
datasetName = "fashionTextureDemo"  # folder under DATA_DIR/images/; "fashionTextureDemo" is generated offline by stage 0
urlsFile = ""  # TSV of label<TAB>url that stage 0 downloads into DATA_DIR/images/<datasetName>/ ("" = none; ~ is expanded)
demoImagesPerClass = 100  # images per class that stage 0 generates for the synthetic demo data set (when its folder is empty)
ratioTrainTest = 0.75  # fraction of each class's images that goes to the training set
imagesSplitBy = "filename"  # "filename": split images at random; "subdir": keep each sub-folder of a class on one side
randomSeed = 0  # seed for the train/test split, SVM cross-validation, refinement (order, augmentation, dropout) and demo generation

# ----------------------------------------------------------------------------------------------
# Download (stage 0 with a URL list)
# ----------------------------------------------------------------------------------------------
dl_workers = 8  # parallel downloads
dl_timeoutSec = 20.0  # per-request timeout in seconds
dl_retries = 1  # extra attempts for a URL that failed with a network error, a timeout, or a 5xx or 429 (too many requests) reply
dl_maxBytes = 25_000_000  # largest file accepted; bigger downloads are abandoned

# ----------------------------------------------------------------------------------------------
# Classifier and network
# ----------------------------------------------------------------------------------------------
classifier = "svm"  # "svm": linear SVM on fixed DNN features; "dnn": refined network; "svmDnnRefined": SVM on refined features
rf_pretrainedModel = "efficientnet_lite0"  # backbone: efficientnet_lite0, _lite1, _lite2 (offline weights; larger = slower), resnet18/34/50
rf_inputResolution = 320  # side in pixels of the square image the network sees (320: fine textures survive; 224 is ~2x faster)
rf_resizeMode = "crop"  # "crop": the centre square of the photo; "squash": the whole photo, distorted; "pad": letterboxed
rf_weightsDir = ""  # folder with downloaded torchvision .pth files for resnet backbones ("" = torch hub cache)

# ----------------------------------------------------------------------------------------------
# Featurization (stage 3)
# ----------------------------------------------------------------------------------------------
run_mbSize = 32  # images per forward pass when featurizing (~1.7 GB of memory at 320 px, ~1.2 GB at 8; lower it when memory runs out)
run_boFlipAverage = False  # average the features of each image and its mirror image (2x the cost; no gain on fashionTexture's training CV)
run_workers = 2  # threads decoding images in parallel with the network (0 = decode in the main thread)

# ----------------------------------------------------------------------------------------------
# SVM (stage 4)
# ----------------------------------------------------------------------------------------------
svm_CVals = [1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0]  # SVM regularisation values tried; the best is chosen by CV on train
svm_boL2Normalize = True  # scale each feature vector to unit length before the SVM
svm_cvFolds = 5  # folds of stratified cross-validation on the training set used to choose C
svm_boBalanceClasses = False  # True: weigh each class inversely to its size and choose C by class-averaged accuracy (unequal classes)
svm_workers = 0  # processes fitting the cross-validation's SVMs in parallel (0 = one per CPU core)

# ----------------------------------------------------------------------------------------------
# Evaluation (stage 5)
# ----------------------------------------------------------------------------------------------
eval_set = "test"  # "test" or "train": which side of the split stage 5 scores

# ----------------------------------------------------------------------------------------------
# DNN refinement (stage 2 with classifier "dnn" or "svmDnnRefined"; Part 2)
# ----------------------------------------------------------------------------------------------
# Defaults (chosen on validation images held out of the training sets, never on test accuracy; see
# benchmarks/select_refine_recipe.py and the README): the new last layer is first fitted on the
# pretrained features, then SGD with momentum refines everything GENTLY for 8 epochs of minibatches
# of 32: lr 0.0003 (x10 for the last layer), 0.0001 for the last 2, with ImageNet's BatchNorm
# statistics kept; the weights of the last 4 epochs are averaged; finally the last layer is fitted
# again on the refined features. Training at 320 px gained 1.6 points of validation accuracy over
# 224 px; averaging gained nothing measurable on 415 validation images (it is there so that the
# result depends less on the epoch at which training stops). The earlier lr 0.001 with re-estimated
# BatchNorm statistics disturbed the pretrained features (validation accuracy 91.6% vs 95.6%), and
# was worse than an SVM on the unrefined features.
rf_dropoutRate = 0.5  # dropout before the new last layer (fraction of features zeroed while training)
rf_mbSize = 32  # images per minibatch when refining (~6 GB of memory at 320 px, ~3 GB at 224; lower it when memory runs out)
rf_maxEpochs = 8  # passes over the training set
rf_maxTrainImages = 0  # refine on at most this many training images, chosen at random but at least one per class (0 = all)
rf_lrPerMb = [0.0003] * 6 + [0.0001] * 2  # learning rate per epoch (the last value repeats for later epochs)
rf_headLrFactor = 10.0  # the new last layer's learning rate is this many times rf_lrPerMb
rf_momentumPerMb = 0.9  # SGD momentum
rf_l2RegWeight = 0.0005  # L2 weight decay
rf_maxGradNorm = 0.0  # clip each step's gradient to this norm (0 = off; 1 halved the held-out error where refining diverged, on digits at 96 px)
rf_boFreezeWeights = False  # True: train only the new last layer, keep the pretrained layers as they are
rf_boInitLastLayer = True  # fit the new last layer on the pretrained features before refining the whole network
rf_boRefitLastLayer = True  # after refining, fit the last layer again on the refined features of the un-augmented training images
rf_averageLastEpochs = 4  # average the network's weights over this many last epochs (SWA; 0 or 1: the last epoch's weights)
rf_boFreezeBatchNorm = True  # keep the pretrained BatchNorm statistics while refining (False: re-estimate them from the minibatches)
rf_boBalanceTrainingSet = False  # True: duplicate images of smaller classes so every class has as many as the largest
rf_workers = 2  # processes decoding the images (once, before the first epoch)
aug_cropScaleMin = 0.6  # random resized crops keep at least this fraction of the image area (1.0 = no crops)
aug_rotationDegrees = 10.0  # random rotations up to this many degrees either way (0 = none)
aug_boHorizontalFlip = True  # mirror half of the training images left-right (False where a mirror image changes the class: text, digits, left/right)
aug_colorJitter = 0.2  # random relative change of brightness, contrast and saturation up to this much (0 = none: when they tell the classes apart)

# ----------------------------------------------------------------------------------------------
# Featurization speed and cache (stage 3)
# ----------------------------------------------------------------------------------------------
run_engine = "auto"  # "auto": ONNX Runtime on a CPU, PyTorch on CUDA/MPS; "onnx" or "torch" to force one
run_boCache = True  # reuse features of unchanged images (same model file, resolution, resize mode, flip) from earlier runs

# ----------------------------------------------------------------------------------------------
# Run tracking (MLflow)
# ----------------------------------------------------------------------------------------------
track_enabled = True  # record every stage in MLflow (env IMGCLASS_TRACKING=0 also turns it off)
track_uri = ""  # MLflow store; "" = MLFLOW_TRACKING_URI, else aml_config/tracking.ini, else sqlite:///DATA_DIR/mlflow.db
track_experiment = ""  # MLflow experiment that runs go to; "" = aml_config/tracking.ini, else "imgclass-<datasetName>"

# ----------------------------------------------------------------------------------------------
# Deployment (stage 6)
# ----------------------------------------------------------------------------------------------
dep_host = "127.0.0.1"  # address the web service listens on ("0.0.0.0" = every network interface, e.g. in Docker)
dep_port = 8000  # TCP port of the web service
dep_rootPath = ""  # path a reverse proxy serves the service under, e.g. "/classifier" ("" = the site root); the API docs need it
dep_workers = 1  # server processes, each with its own copy of the model (more = more parallel requests, more memory)
dep_threads = 0  # ONNX Runtime threads per worker for one batch (0 = the usable CPU cores shared among dep_workers)
dep_maxBatch = 4  # most images the service scores in one ONNX Runtime call when requests arrive together (larger batches were no faster per image on 2 cores)
dep_maxUploadBytes = 20_000_000  # largest request body accepted, all images together (bigger: HTTP 413)
dep_maxPixels = 50_000_000  # largest image accepted, in pixels as decoded (takes 50 MP phone photos; bigger: HTTP 413)
dep_maxImagesPerRequest = 16  # most images in one request (more: HTTP 413)
dep_maxConcurrent = 32  # requests to score one worker holds at once, each with its upload in memory (more: HTTP 503, retry)
dep_bodyTimeoutSec = 30.0  # seconds a request may pause while sending its body; then HTTP 408 and its place is free
dep_graceSec = 5.0  # after SIGTERM / Ctrl-C, seconds requests in progress get to finish; those still waiting then get HTTP 503
dep_corsOrigins = []  # web pages elsewhere that may call the service from a browser, e.g. ["https://example.com"]; ["*"] = any ([] = none)
dep_timeoutSec = 30.0  # 6_callWebservice.py: seconds to wait for the service's reply

# ----------------------------------------------------------------------------------------------
# Building a data set (scraping, near duplicates, active learning; Part 3)
# ----------------------------------------------------------------------------------------------
scrape_provider = "openverse"  # image search: "openverse" (openly licensed, no key) or "bing" (key: BING_SEARCH_V7_* env)
scrape_items = ["blouse", "hoodie", "pullover", "sweater", "shirt", "t-shirt", "vest"]  # each is combined with each attribute
scrape_attributes = ["striped", "dotted", "leopard"]  # attributes = class labels; query "<attribute> <item>" gives images of class <attribute>
scrape_resultsPerQuery = 50  # top results kept per query (the service is paged until this many are found or it has no more)
scrape_timeoutSec = 20.0  # per-request timeout of the search service in seconds
scrape_pauseSec = 1.0  # seconds between two requests to the search service (anonymous Openverse clients are limited in bursts); 0 = no pause
dedup_threshold = 15  # near duplicates: images whose 256-bit dhashes differ in at most this many bits
leakageCheck = "move"  # stage 1's near copies across train/test: "move" the test copy to train, "report" only, or "off"
al_criterion = "margin"  # active learning: pick images with the smallest "margin" (top1 - top2), lowest "topScore", or highest "entropy"
al_numImages = 20  # active learning: images to label per round
