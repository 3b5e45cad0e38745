//! A small residual network on the embedded UCI handwritten digits (or on
//! MNIST IDX files): conv–batch-norm–ReLU blocks with identity and strided
//! 1×1 shortcuts, global average pooling and dropout before the classifier.
//! Trains in training mode (batch statistics, dropout on) and evaluates in
//! evaluation mode (running statistics, dropout off), with the same options
//! and progress line as `train_digits`.
//!
//! ```text
//! cargo run --release --example train_resnet
//! cargo run --release --example train_resnet -- --help
//! ```

mod common;

use rand::rngs::StdRng;
use std::process::ExitCode;
use tapegrad::Conv2dOptions;
use tapegrad::nn::{
    BasicBlock, BatchNorm, Conv2d, Dropout, GlobalAvgPool2d, Linear, Params, ReLU, Sequential,
};

const HELP: &str = "\
train_resnet: train a small residual network on handwritten digits with tapegrad

USAGE:
    cargo run --release --example train_resnet -- [OPTIONS]

OPTIONS:
    --epochs N        training epochs (default 30)
    --batch-size N    mini-batch size (default 64)
    --lr X            Adam learning rate, cosine-annealed to 1% (default 0.005)
    --seed N          seed for initialisation, dropout and shuffling (default 0); same seed and threads, same run
    --save PATH       save the trained weights and batch-norm statistics (safetensors) to PATH
    --load PATH       evaluate weights saved with --save instead of training
    --mnist DIR       train on MNIST IDX files in DIR (train-images-idx3-ubyte, …) and
                      report accuracy on t10k, instead of the embedded digits
    --no-augment      train without the random one-pixel shifts
    --plot PATH       write the loss and accuracy per epoch and the confusion matrix as an SVG
    --threads N       worker threads (default: all cores; also TAPEGRAD_THREADS)
    -h, --help        print this help

Model: conv 1→16 3x3 pad 1 + batch norm + relu; residual blocks 16→16 (stride 1,
identity shortcut), 16→32 and 32→64 (stride 2, 1x1 conv + batch norm shortcut);
global average pooling; dropout 0.2; linear 64 → 10; softmax cross-entropy; Adam.";

/// The residual network (torchvision's layer names).
fn resnet(params: &mut Params, _height: usize, _width: usize, rng: &mut StdRng) -> Sequential {
    let pad = Conv2dOptions::default().padding(1);
    Sequential::new()
        .push(Conv2d::with_options(
            params, "conv1", 1, 16, 3, pad, false, rng,
        ))
        .push(BatchNorm::new_2d(params, "bn1", 16))
        .push(ReLU)
        .push(BasicBlock::with_rng(params, "layer1", 16, 16, 1, rng))
        .push(BasicBlock::with_rng(params, "layer2", 16, 32, 2, rng))
        .push(BasicBlock::with_rng(params, "layer3", 32, 64, 2, rng))
        .push(GlobalAvgPool2d)
        .push(Dropout::new(0.2, rng))
        .push(Linear::with_options(params, "fc", 64, 10, true, rng))
}

fn main() -> ExitCode {
    common::main(&common::Example {
        help: HELP,
        epochs: 30,
        lr: 0.005,
        model: resnet,
    })
}
