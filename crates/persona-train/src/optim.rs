//! AdamW over the adapter tensors, with global-norm gradient clipping and a
//! linear warm-up / linear decay schedule (PyTorch/HF semantics).
//!
//! Written here rather than taken from burn-optim for two reasons that
//! matter to this project: burn's gradient clipping by norm clips each
//! parameter separately (PyTorch, PEFT and the paper clip the global norm),
//! and its optimizer state is keyed by per-process random `ParamId`s, while a
//! resumed run must restore the state bit for bit from our own checkpoint.

use burn::tensor::Tensor;

/// Learning rate at optimizer step `step` (0-based), as HF's
/// `get_linear_schedule_with_warmup`: `lr * step / warmup` during warm-up,
/// then linear decay to 0 at `total`.
pub fn lr_at(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let rest = total.saturating_sub(warmup).max(1);
    peak * (total.saturating_sub(step) as f64 / rest as f64).max(0.0)
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments {
    pub m: Tensor<2>,
    pub v: Tensor<2>,
}

impl AdamW {
    /// The hyper-parameters of a recipe's `[optim]`.
    pub fn of(o: &crate::recipe::OptimSection) -> Self {
        Self {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        }
    }

    /// One update of `param` (detached) with gradient `grad`; `t` is the
    /// 1-based step count used for bias correction.
    pub fn update(
        &self,
        param: Tensor<2>,
        grad: Tensor<2>,
        state: &mut Moments,
        lr: f64,
        t: usize,
    ) -> Tensor<2> {
        let (b1, b2) = (self.beta1, self.beta2);
        state.m = state.m.clone().mul_scalar(b1) + grad.clone().mul_scalar(1.0 - b1);
        state.v = state.v.clone().mul_scalar(b2) + grad.square().mul_scalar(1.0 - b2);
        let m_hat = state.m.clone().div_scalar(1.0 - b1.powi(t as i32));
        let v_hat = state.v.clone().div_scalar(1.0 - b2.powi(t as i32));
        let decayed = param.mul_scalar(1.0 - lr * self.weight_decay);
        decayed - m_hat.div(v_hat.sqrt().add_scalar(self.eps)).mul_scalar(lr)
    }
}

/// Global L2 norm of a set of gradients.
pub fn global_norm(grads: &[Tensor<2>]) -> f64 {
    grads
        .iter()
        .map(|g| g.clone().square().sum().into_scalar::<f32>() as f64)
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(lr_at(1.0, 0, 4, 10), 0.0);
        assert_eq!(lr_at(1.0, 2, 4, 10), 0.5);
        assert_eq!(lr_at(1.0, 4, 4, 10), 1.0);
        assert!((lr_at(1.0, 7, 4, 10) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(1.0, 10, 4, 10), 0.0);
        assert_eq!(lr_at(2.0, 0, 0, 4), 2.0);
    }

    #[test]
    fn first_adamw_step_matches_pytorch_formula() {
        // PyTorch AdamW, step 1: p <- p(1 - lr wd) - lr * g / (|g| + eps) (bias-corrected m/sqrt(v) = g/|g|).
        let dev = Device::flex();
        let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, 3]), &dev);
        let opt = AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut st = Moments {
            m: t(vec![0.0; 3]),
            v: t(vec![0.0; 3]),
        };
        let p = opt.update(
            t(vec![1.0, -2.0, 0.5]),
            t(vec![0.5, -0.25, 0.0]),
            &mut st,
            0.01,
            1,
        );
        let got = p.into_data().try_into_vec::<f32>().unwrap();
        let want = [
            1.0 * (1.0 - 0.001) - 0.01,
            -2.0 * (1.0 - 0.001) + 0.01,
            0.5 * (1.0 - 0.001),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
