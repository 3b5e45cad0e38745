//! The main job: train a small CNN on the embedded UCI handwritten digits (or on MNIST
//! IDX files) with tapegrad, print live progress, a confusion matrix and the test accuracy.
//!
//! ```text
//! cargo run --release --example train_digits                # the main job, on the embedded digits
//! cargo run --release --example train_digits -- --help
//! ```

mod common;

use rand::rngs::StdRng;
use std::process::ExitCode;
use tapegrad::nn::{Conv2d, Flatten, Linear, MaxPool2d, Params, ReLU, Sequential};

const HELP: &str = "\
train_digits: train a CNN on handwritten digits with tapegrad

USAGE:
    cargo run --release --example train_digits -- [OPTIONS]

OPTIONS:
    --epochs N        training epochs (default 50)
    --batch-size N    mini-batch size (default 64)
    --lr X            Adam learning rate, cosine-annealed to 1% (default 0.008)
    --seed N          seed for initialisation and shuffling (default 0); same seed and threads, same run
    --save PATH       save the trained weights (safetensors) to PATH
    --load PATH       evaluate weights saved with --save instead of training
    --mnist DIR       train on MNIST IDX files in DIR (train-images-idx3-ubyte, …) and
                      report accuracy on t10k, instead of the embedded digits
    --no-augment      train without the random one-pixel shifts
    --plot PATH       write the loss and accuracy per epoch and the confusion matrix as an SVG
    --threads N       worker threads (default: all cores; also TAPEGRAD_THREADS)
    -h, --help        print this help

Model: conv 1→16 3x3 pad 1, relu, maxpool 2, conv 16→32 3x3 pad 1, relu, maxpool 2,
flatten, linear → 10; softmax cross-entropy; Adam.";

/// The CNN: two conv-relu-pool stages and a linear classifier (initialised
/// from the parameter store's generator, which the driver seeds with `--seed`).
fn cnn(params: &mut Params, height: usize, width: usize, _: &mut StdRng) -> Sequential {
    Sequential::new()
        .push(Conv2d::new(params, "conv1", 1, 16, 3).padding(1))
        .push(ReLU)
        .push(MaxPool2d::new(2))
        .push(Conv2d::new(params, "conv2", 16, 32, 3).padding(1))
        .push(ReLU)
        .push(MaxPool2d::new(2))
        .push(Flatten)
        .push(Linear::new(
            params,
            "fc",
            32 * (height / 4) * (width / 4),
            10,
        ))
}

fn main() -> ExitCode {
    common::main(&common::Example {
        help: HELP,
        epochs: 50,
        lr: 0.008,
        model: cnn,
    })
}
