//! A convolutional denoising autoencoder on the embedded 8×8 digits: a
//! strided-conv encoder (8×8 → 4×4 → 2×2) and a transposed-conv decoder
//! (2×2 → 4×4 → 8×8), trained with Adam to map images with Gaussian noise
//! added to the clean images (mean squared error). Prints the reconstruction
//! loss per epoch, on the training set and on the (noisy) test set, and
//! writes `autoencoder.pgm`: noisy test images, their reconstructions and
//! the clean images, in three rows, scaled up 8×.
//!
//! ```text
//! cargo run --release --example autoencoder
//! ```

use rand::SeedableRng;
use rand::rngs::StdRng;
use std::time::Instant;
use tapegrad::data::{Normalize, digits_train_test};
use tapegrad::nn::{self, Conv2d, ConvTranspose2d, Module, Params, ReLU, Sequential, Sigmoid};
use tapegrad::optim::{Adam, Optimizer};
use tapegrad::{Conv2dOptions, ConvTranspose2dOptions, Tape, Tensor};

const EPOCHS: usize = 30;
const BATCH: usize = 32;
const LR: f64 = 0.005;
/// Standard deviation of the noise added to the images (pixels are in [0, 1]).
const NOISE: f32 = 0.3;
/// Test images shown in the picture, and the picture's scale.
const SHOWN: usize = 10;
const SCALE: usize = 8;

/// Encoder: conv 1→16 (3×3, stride 2) to 4×4, conv 16→32 to 2×2; decoder:
/// transposed conv 32→16 (4×4, stride 2, padding 1) to 4×4, then 16→1 to
/// 8×8 and a sigmoid (pixels in [0, 1]).
fn autoencoder(params: &mut Params, rng: &mut StdRng) -> Sequential {
    let down = Conv2dOptions::default().stride(2).padding(1);
    let up = ConvTranspose2dOptions::default().stride(2).padding(1);
    Sequential::new()
        .push(Conv2d::with_options(
            params, "enc1", 1, 16, 3, down, true, rng,
        ))
        .push(ReLU)
        .push(Conv2d::with_options(
            params, "enc2", 16, 32, 3, down, true, rng,
        ))
        .push(ReLU)
        .push(ConvTranspose2d::with_options(
            params, "dec1", 32, 16, 4, up, true, rng,
        ))
        .push(ReLU)
        .push(ConvTranspose2d::with_options(
            params, "dec2", 16, 1, 4, up, true, rng,
        ))
        .push(Sigmoid)
}

/// `clean` plus Gaussian noise of standard deviation [`NOISE`].
fn noisy(clean: &Tensor<f32>, rng: &mut StdRng) -> Tensor<f32> {
    let noise = Tensor::<f32>::randn(clean.shape().clone(), rng);
    clean.zip_map(&noise, "add noise", |x, n| x + NOISE * n)
}

fn mse(a: &Tensor<f32>, b: &Tensor<f32>) -> f64 {
    let sum: f64 = a
        .data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    sum / a.numel() as f64
}

/// Writes a binary PGM of three rows of `SHOWN` images (`[N, 1, 8, 8]`
/// tensors with values in [0, 1], clamped), each pixel a SCALE×SCALE block,
/// with a gap between images.
fn write_pgm(path: &str, rows: &[&Tensor<f32>]) -> std::io::Result<()> {
    let (side, gap) = (8 * SCALE, 4);
    let width = SHOWN * (side + gap) + gap;
    let height = rows.len() * (side + gap) + gap;
    let mut pixels = vec![40u8; width * height];
    for (r, images) in rows.iter().enumerate() {
        for i in 0..SHOWN {
            for y in 0..side {
                for x in 0..side {
                    let v = images.get(&[i, 0, y / SCALE, x / SCALE]).clamp(0.0, 1.0);
                    let (py, px) = (gap + r * (side + gap) + y, gap + i * (side + gap) + x);
                    pixels[py * width + px] = (v * 255.0).round() as u8;
                }
            }
        }
    }
    let mut out = format!("P5\n{width} {height}\n255\n").into_bytes();
    out.extend_from_slice(&pixels);
    std::fs::write(path, out)
}

fn main() -> std::io::Result<()> {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(0);
    let (train, test) = digits_train_test();
    // Pixels scaled to [0, 1], not standardised: the sigmoid output matches them.
    let norm = Normalize::IDENTITY;
    let mut params = Params::new();
    let model = autoencoder(&mut params, &mut rng);
    println!(
        "denoising autoencoder: {} parameters; {} training and {} test images, noise σ = {NOISE}",
        params.num_elements(),
        train.len(),
        test.len()
    );
    let test_clean = test.to_tensor::<f32>(norm);
    // One fixed draw of noise for the test set, so epochs compare.
    let test_noisy = noisy(&test_clean, &mut StdRng::seed_from_u64(1));
    println!(
        "test MSE of the noisy input itself: {:.4}",
        mse(&test_noisy, &test_clean)
    );
    let mut opt = Adam::new(LR);
    for epoch in 1..=EPOCHS {
        let (mut total, mut count) = (0.0, 0);
        for batch in train.shuffled_batches::<f32>(BATCH, norm, &mut rng) {
            let input = noisy(&batch.images, &mut rng);
            let grads = {
                let tape = Tape::new();
                let p = params.bind(&tape);
                let out = model.forward(&p, tape.constant(input));
                let loss = out.mse_loss(tape.constant(batch.images.clone()));
                total += f64::from(loss.value().item()) * batch.len() as f64;
                count += batch.len();
                p.grads(loss.backward())
            };
            opt.step(&mut params, &grads);
        }
        let test_loss = mse(
            &nn::predict(&model, &params, test_noisy.clone()),
            &test_clean,
        );
        println!(
            "epoch {epoch:2}: train MSE {:.4}, test MSE {test_loss:.4}",
            total / count as f64
        );
    }
    let reconstructed = nn::predict(&model, &params, test_noisy.clone());
    let path = "autoencoder.pgm";
    write_pgm(path, &[&test_noisy, &reconstructed, &test_clean])?;
    let full = std::env::current_dir()?.join(path);
    println!(
        "wrote {} (rows: noisy test inputs, reconstructions, clean images; {SCALE}× scale) in {:.1} s",
        full.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
