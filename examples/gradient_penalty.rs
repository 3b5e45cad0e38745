//! A WGAN-GP critic on 2-D toy data: the critic D maximises
//! E[D(real)] − E[D(fake)] with the gradient penalty λ·E[(‖∇ₓD(x̂)‖ − 1)²]
//! on points x̂ between real and fake samples. The penalty needs the
//! gradient of D with respect to its input inside the loss, differentiated
//! again with respect to D's weights: `grad_graph`. It prints the critic's
//! estimate of the Wasserstein distance and the mean gradient norm, which
//! the penalty pulls to 1.
//!
//! ```text
//! cargo run --release --example gradient_penalty
//! ```

use tapegrad::prelude::*;

fn main() {
    let mut rng = StdRng::seed_from_u64(0);
    let mut params = Params::new();
    let critic = Sequential::new()
        .push(Linear::with_options(
            &mut params,
            "fc1",
            2,
            32,
            true,
            &mut rng,
        ))
        .push(Tanh)
        .push(Linear::with_options(
            &mut params,
            "fc2",
            32,
            32,
            true,
            &mut rng,
        ))
        .push(Tanh)
        .push(Linear::with_options(
            &mut params,
            "fc3",
            32,
            1,
            true,
            &mut rng,
        ));
    let mut opt = Adam::new(2e-3).betas(0.5, 0.9);
    let (batch, lambda) = (128, 10.0f32);
    // Real: a Gaussian at (2, 2); fake: a wider Gaussian at (−1, 0), √13 ≈ 3.6 away.
    let sample = |rng: &mut StdRng, centre: [f32; 2], scale: f32| {
        let z = Tensor::<f32>::randn([batch, 2], rng);
        let c = Tensor::from_vec(centre.to_vec(), [2]).unwrap();
        z.map(|v| v * scale)
            .zip_map(&c.broadcast_to([batch, 2]), "shift", |a, b| a + b)
    };
    println!("step  critic loss  W estimate  penalty  mean ‖∇D(x̂)‖");
    for step in 0..=600 {
        let (real, fake) = (
            sample(&mut rng, [2.0, 2.0], 0.5),
            sample(&mut rng, [-1.0, 0.0], 1.0),
        );
        let t = Tensor::<f32>::rand_uniform([batch, 1], 0.0, 1.0, &mut rng);
        let mix = real
            .zip_map(&t.broadcast_to([batch, 2]), "mix", |r, t| r * t)
            .zip_map(
                &fake.zip_map(&t.broadcast_to([batch, 2]), "mix", |f, t| f * (1.0 - t)),
                "mix",
                |a, b| a + b,
            );
        let tape = Tape::new();
        let p = params.bind(&tape);
        let w_est = critic.forward(&p, tape.constant(real)).mean()
            - critic.forward(&p, tape.constant(fake)).mean();
        let x_hat = tape.leaf(mix);
        let d = critic.forward(&p, x_hat).sum();
        let gx = d.grad_graph(&[x_hat])[0]; // ∂D/∂x̂, a node on the tape
        let norms = ((gx * gx).sum_axes(&[1], false) + 1e-12).sqrt();
        let penalty = (norms - 1.0).powf(2.0).mean();
        let loss = penalty * lambda - w_est;
        if step % 100 == 0 {
            println!(
                "{step:>4}  {:>11.4}  {:>10.4}  {:>7.4}  {:>13.4}",
                loss.value().item(),
                w_est.value().item(),
                penalty.value().item(),
                norms.mean().value().item()
            );
        }
        let grads = p.grads(loss.backward());
        drop(tape);
        opt.step(&mut params, &grads);
    }
}
