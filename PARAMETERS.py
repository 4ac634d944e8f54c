"""Every knob of the pipeline, in one place.

Each stage script in scripts/ reads this file; `--set NAME=VALUE` overrides a value for one run
(VALUE is read as a Python literal, else as a string), and the environment variable
IMGCLASS_DATA_DIR overrides DATA_DIR. Values are validated when loaded (libraries/imgclass/params.py),
so a typo fails at once with a message that says what is allowed.
"""

import os

# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
DATA_DIR = os.path.join(os.path.expanduser("~"), "imgclass_data")  # root of images/, proc/, results/ (env IMGCLASS_DATA_DIR wins)
datasetName = "fashionTextureDemo"  # folder under DATA_DIR/images/; "fashionTextureDemo" is generated offline by stage 0
urlsFile = ""  # TSV of label<TAB>url that stage 0 downloads into DATA_DIR/images/<datasetName>/ ("" = none)
demoImagesPerClass = 100  # images per class that stage 0 generates for the synthetic demo data set
ratioTrainTest = 0.75  # fraction of each class's images that goes to the training set
imagesSplitBy = "filename"  # "filename": split images at random; "subdir": keep each sub-folder of a class on one side
randomSeed = 0  # seed for the train/test split, SVM cross-validation and demo generation

# ----------------------------------------------------------------------------------------------
# Download (stage 0 with a URL list)
# ----------------------------------------------------------------------------------------------
dl_workers = 8  # parallel downloads
dl_timeoutSec = 20.0  # per-request timeout in seconds
dl_retries = 1  # extra attempts for a URL that failed with a network error or a 5xx reply
dl_maxBytes = 25_000_000  # largest file accepted; bigger downloads are abandoned

# ----------------------------------------------------------------------------------------------
# Classifier and network
# ----------------------------------------------------------------------------------------------
classifier = "svm"  # "svm": linear SVM on fixed DNN features; "dnn": refined network; "svmDnnRefined": SVM on refined features
rf_pretrainedModel = "efficientnet_lite0"  # backbone: efficientnet_lite0 (offline weights), resnet18, resnet34, resnet50
rf_inputResolution = 224  # side in pixels of the square image the network sees
rf_resizeMode = "squash"  # "squash": resize the whole photo to a square; "crop": shorter side, then centre crop; "pad": letterbox
rf_weightsDir = ""  # folder with downloaded torchvision .pth files for resnet backbones ("" = torch hub cache)

# ----------------------------------------------------------------------------------------------
# Featurization (stage 3)
# ----------------------------------------------------------------------------------------------
run_mbSize = 32  # images per forward pass when featurizing
run_boFlipAverage = True  # average the features of each image and its mirror image (more robust features)
run_workers = 2  # processes decoding images in parallel with the network (0 = decode in the main process)

# ----------------------------------------------------------------------------------------------
# SVM (stage 4)
# ----------------------------------------------------------------------------------------------
svm_CVals = [1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0]  # SVM regularisation values tried; the best is chosen by CV on train
svm_boL2Normalize = True  # scale each feature vector to unit length before the SVM
svm_cvFolds = 5  # folds of stratified cross-validation on the training set used to choose C

# ----------------------------------------------------------------------------------------------
# Evaluation (stage 5)
# ----------------------------------------------------------------------------------------------
eval_set = "test"  # "test" or "train": which side of the split stage 5 scores

# ----------------------------------------------------------------------------------------------
# DNN refinement (stage 2 with classifier "dnn" or "svmDnnRefined"; Part 2)
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# Featurization speed and cache (stage 3)
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# Run tracking (MLflow)
# ----------------------------------------------------------------------------------------------
track_enabled = True  # record every stage in MLflow (env IMGCLASS_TRACKING=0 also turns it off)
track_uri = ""  # MLflow store; "" = MLFLOW_TRACKING_URI, else aml_config/tracking.ini, else sqlite:///DATA_DIR/mlflow.db
track_experiment = ""  # MLflow experiment that runs go to; "" = aml_config/tracking.ini, else "imgclass-<datasetName>"

# ----------------------------------------------------------------------------------------------
# Deployment (stage 6)
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# Building a data set (scraping, near duplicates, active learning; Part 3)
# ----------------------------------------------------------------------------------------------
