//! State dicts move between PyTorch and tapegrad in both directions, batch
//! norm's buffers included, with strict loading:
//!
//! - `interop_torch.safetensors` is a PyTorch model (conv, batch norm,
//!   channel dropout, pooling, linear, 1-D batch norm, dropout, linear)
//!   trained a few steps and saved by `safetensors.torch.save_file`; tapegrad
//!   loads it into the same architecture and must give PyTorch's eval-mode
//!   outputs.
//! - `interop_tapegrad.safetensors` is what tapegrad writes for that
//!   architecture (this test checks the file is still byte for byte what
//!   tapegrad writes); PyTorch loaded it with `load_state_dict(strict=True)`
//!   and its eval-mode outputs must be tapegrad's.
//!
//! Both files and the outputs in `interop.txt` come from `scripts/gen_interop.py`
//! (run `TAPEGRAD_WRITE_INTEROP=1 cargo test --test interop` first, to write
//! tapegrad's file). The tests never run Python.

mod common;
use common::fixtures;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::path::PathBuf;
use tapegrad::nn::{
    BatchNorm, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Params, ReLU, Sequential, predict,
};
use tapegrad::{Conv2dOptions, Pool2dOptions, Tensor};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The architecture of `scripts/gen_interop.py`, with PyTorch's names.
fn model(params: &mut Params<f32>, seed: u64) -> Sequential<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pad = Conv2dOptions::default().padding(1);
    Sequential::new()
        .push(Conv2d::with_options(
            params, "conv", 1, 4, 3, pad, true, &mut rng,
        ))
        .push(BatchNorm::new_2d(params, "bn1", 4))
        .push(ReLU)
        .push(Dropout::new_2d(0.2, &mut rng))
        .push(MaxPool2d(Pool2dOptions::new(2)))
        .push(Flatten)
        .push(Linear::with_options(params, "fc1", 64, 16, true, &mut rng))
        .push(BatchNorm::new_1d(params, "bn2", 16))
        .push(ReLU)
        .push(Dropout::new(0.5, &mut rng))
        .push(Linear::with_options(params, "fc2", 16, 10, true, &mut rng))
}

fn fixture_f32(case: &fixtures::Case, name: &str) -> Tensor<f32> {
    let (shape, data) = case.tensor(name);
    Tensor::<f64>::from_vec(data.to_vec(), shape)
        .unwrap()
        .cast()
}

#[test]
fn a_pytorch_state_dict_loads_strictly_and_gives_pytorchs_outputs() {
    let cases = fixtures::load("interop.txt");
    let case = fixtures::find(&cases, "torch_to_tapegrad");
    let mut params = Params::new();
    let net = model(&mut params, 0);
    params
        .load(fixture_path("interop_torch.safetensors"))
        .unwrap();
    let bn1 = params.buffer_id("bn1.num_batches_tracked").unwrap();
    assert_eq!(params.buffer(bn1).item(), case.param_f64("steps") as f32);
    let y = predict(&net, &params, fixture_f32(case, "x"));
    let want = fixture_f32(case, "y");
    assert!(y.max_abs_diff(&want) < 1e-5, "{y}\nvs PyTorch\n{want}");
}

/// tapegrad's side: the model with seed 7 and running statistics set to known values.
fn tapegrad_side() -> (Params<f32>, Sequential<f32>) {
    let mut params = Params::new();
    let net = model(&mut params, 7);
    for (bn, c) in [("bn1", 4), ("bn2", 16)] {
        let mean = Tensor::from_vec((0..c).map(|i| 0.1 * i as f32 - 0.3).collect(), [c]).unwrap();
        let var = Tensor::from_vec((0..c).map(|i| 0.5 + 0.25 * i as f32).collect(), [c]).unwrap();
        params.set_buffer(
            params.buffer_id(&format!("{bn}.running_mean")).unwrap(),
            mean,
        );
        params.set_buffer(params.buffer_id(&format!("{bn}.running_var")).unwrap(), var);
        let n = params
            .buffer_id(&format!("{bn}.num_batches_tracked"))
            .unwrap();
        params.set_buffer(n, Tensor::scalar(42.0));
    }
    (params, net)
}

#[test]
fn a_tapegrad_state_dict_loads_strictly_in_pytorch_with_the_same_outputs() {
    let (params, net) = tapegrad_side();
    let bytes = params.to_safetensors_bytes().unwrap();
    let path = fixture_path("interop_tapegrad.safetensors");
    if std::env::var_os("TAPEGRAD_WRITE_INTEROP").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let committed = std::fs::read(&path).unwrap();
    assert!(
        committed == bytes,
        "tapegrad no longer writes {} as committed (regenerate with scripts/gen_interop.py)",
        path.display()
    );
    let cases = fixtures::load("interop.txt");
    let case = fixtures::find(&cases, "tapegrad_to_torch");
    let y = predict(&net, &params, fixture_f32(case, "x"));
    let want = fixture_f32(case, "y");
    assert!(y.max_abs_diff(&want) < 1e-5, "{y}\nvs PyTorch\n{want}");
}

#[test]
fn a_pytorch_decoder_with_transposed_convs_and_upsampling_loads_strictly() {
    use tapegrad::nn::{ConvTranspose2d, Module, Upsample};
    use tapegrad::{ConvTranspose2dOptions, Tape, UpsampleSize};
    let cases = fixtures::load("interop.txt");
    let case = fixtures::find(&cases, "decoder");
    let mut rng = StdRng::seed_from_u64(0);
    let mut params = Params::new();
    let fc = Linear::with_options(&mut params, "fc", 8, 32, true, &mut rng);
    let o1 = ConvTranspose2dOptions::new().stride(2).padding(1);
    let up1 = ConvTranspose2d::with_options(&mut params, "up1", 8, 4, 4, o1, true, &mut rng);
    let up2 = ConvTranspose2d::with_options(
        &mut params,
        "up2",
        4,
        1,
        3,
        ConvTranspose2dOptions::new().padding(1),
        true,
        &mut rng,
    );
    let upsample = Upsample::bilinear(UpsampleSize::Scale(2.0, 2.0), false);
    params
        .load(fixture_path("interop_decoder.safetensors"))
        .unwrap();
    let z = fixture_f32(case, "z");
    let n = z.shape()[0];
    let tape = Tape::no_grad();
    let p = params.bind_eval(&tape);
    let h = fc.forward(&p, tape.constant(z)).reshape([n, 8, 2, 2]);
    let h = upsample.forward(&p, up1.forward(&p, h).relu());
    let y = up2.forward(&p, h).sigmoid().value();
    let want = fixture_f32(case, "y");
    assert_eq!(y.shape(), want.shape());
    assert!(y.max_abs_diff(&want) < 1e-5, "{y}\nvs PyTorch\n{want}");
}
