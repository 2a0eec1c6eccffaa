//! The hyperparameters of a training run (TRAINING.md section 1 and the
//! `Train` fields of `reference/pgtrain.py`, which the golden files' `train`
//! metadata lists): defaults are the record's, `--hp NAME=VALUE` sets one by
//! name, [`Hyper::check`] refuses values no run can use.

use serde::{Deserialize, Serialize};

/// A value `--hp` can set, parsed from its text.
trait HpValue: Sized {
    fn parse_hp(text: &str) -> Result<Self, String>;
}

impl HpValue for u64 {
    fn parse_hp(t: &str) -> Result<Self, String> {
        // The golden metadata writes integers as JSON numbers; `16.0` is accepted as 16.
        t.parse::<u64>().or_else(|_| match t.parse::<f64>() {
            Ok(f) if f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => Ok(f as u64),
            _ => Err("expected a non-negative integer".to_string()),
        })
    }
}

impl HpValue for i64 {
    fn parse_hp(t: &str) -> Result<Self, String> {
        t.parse::<i64>().or_else(|_| match t.parse::<f64>() {
            Ok(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(f as i64),
            _ => Err("expected an integer".to_string()),
        })
    }
}

impl HpValue for f64 {
    fn parse_hp(t: &str) -> Result<Self, String> {
        match t.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(f),
            Ok(_) => Err("expected a finite number".to_string()),
            Err(_) => Err("expected a number".to_string()),
        }
    }
}

impl HpValue for bool {
    fn parse_hp(t: &str) -> Result<Self, String> {
        match t.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("expected true or false (or 1 / 0)".to_string()),
        }
    }
}

impl HpValue for String {
    fn parse_hp(t: &str) -> Result<Self, String> {
        Ok(t.to_string())
    }
}

impl HpValue for [f64; 3] {
    fn parse_hp(t: &str) -> Result<Self, String> {
        let parts: Vec<&str> = t.trim_matches(|c| c == '[' || c == ']' || c == '(' || c == ')').split(',').map(str::trim).collect();
        let v: Vec<f64> = parts.iter().map(|p| f64::parse_hp(p)).collect::<Result<_, _>>().map_err(|_| "expected three numbers a,b,c".to_string())?;
        <[f64; 3]>::try_from(v).map_err(|_| "expected three numbers a,b,c".to_string())
    }
}

macro_rules! hyper {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, )*) => {
        /// Every hyperparameter; field names are the `--hp` names.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Hyper {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Hyper {
            fn default() -> Self {
                Hyper { $( $name: $default, )* }
            }
        }

        impl Hyper {
            /// The names `--hp` takes.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Set hyperparameter `name` from its text; unknown names and
            /// unparsable values are refused with a message naming both.
            pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
                match name {
                    $( stringify!($name) => {
                        self.$name = <$ty as HpValue>::parse_hp(value.trim()).map_err(|e| format!("--hp {name}={value}: {e}"))?;
                    } )*
                    _ => return Err(format!("--hp {name}: unknown hyperparameter (known: {})", Self::NAMES.join(", "))),
                }
                Ok(())
            }
        }
    };
}

hyper! {
    /// Step limit; the iteration schedule's length.
    iterations: u64 = 20000,
    /// Length of the LR warmdown in steps (by wall clock: steps' worth of time); <= 0: no warmdown.
    warmdown_iters: i64 = 2500,
    /// Training-time cap in seconds (`--minutes` sets it); <= 0: the LR schedule runs by iteration.
    max_wallclock_seconds: f64 = 600.0,
    /// > 0: a simulated clock, `elapsed = steps done * sim_step_ms` (reproducible wall-clock schedules).
    sim_step_ms: f64 = 0.0,
    /// Compile-priming steps, rolled back; the trajectory is the same without them, so the CPU skips them.
    warmup_steps: u64 = 20,
    /// Ranks of the data-parallel step (run one after the other on one process).
    world_size: u64 = 8,
    /// Micro-steps per rank per optimizer step.
    grad_accum: u64 = 1,
    /// Tokens per optimizer step, all ranks together; 0: `world_size * grad_accum * batch * seq` (must agree when set).
    train_batch_tokens: u64 = 0,
    /// Sequence length; 0: the model's `seq` (must agree when set).
    train_seq_len: u64 = 0,
    val_batch_size: u64 = 524_288,
    val_loss_every: u64 = 500,
    /// Period of the progress line in steps (0: only the first and last).
    train_log_every: u64 = 100,
    /// AdamW lr of `tok_emb.weight` and `bigram.embed.weight`.
    tied_embed_lr: f64 = 0.03,
    tied_embed_init_std: f64 = 0.005,
    /// Muon lr.
    matrix_lr: f64 = 0.02,
    /// AdamW lr of the control tensors.
    scalar_lr: f64 = 0.02,
    /// Unused (an untied head only).
    embed_lr: f64 = 0.6,
    /// Unused (an untied head only).
    head_lr: f64 = 0.008,
    beta1: f64 = 0.9,
    beta2: f64 = 0.95,
    adam_eps: f64 = 1e-8,
    /// AdamW decoupled weight decay (both AdamW groups).
    weight_decay: f64 = 0.04,
    muon_weight_decay: f64 = 0.04,
    /// Muon momentum after the ramp.
    muon_momentum: f64 = 0.99,
    muon_momentum_warmup_start: f64 = 0.92,
    muon_momentum_warmup_steps: u64 = 1500,
    /// Newton-Schulz iterations.
    muon_backend_steps: u64 = 5,
    muon_nesterov: bool = true,
    /// Newton-Schulz coefficients (a, b, c).
    ns_coeffs: [f64; 3] = [3.4445, -4.7750, 2.0315],
    ns_eps: f64 = 1e-7,
    /// Global gradient-norm clip; 0: no clipping.
    grad_clip_norm: f64 = 0.3,
    qk_gain_init: f64 = 1.5,
    swa_enabled: bool = true,
    /// SWA collects only while the LR scale is below this.
    swa_start_frac: f64 = 0.4,
    /// SWA collects when the completed-step count is a multiple of this.
    swa_every: u64 = 50,
    /// Fake quantization in the training forward pass (train mode); false: eval mode.
    qat: bool = true,
    eval_stride: u64 = 64,
    eval_batch_seqs: u64 = 32,
    /// How `param0.*` was made (init only; ignored when weights are given).
    seed: u64 = 42,
    /// How `param0.*` was made: "train" (the record's rules) or "dense" (ignored when weights are given).
    init: String = "train".to_string(),
}

impl Hyper {
    /// Apply a JSON object of hyperparameters (the golden files' `train`
    /// metadata), each value as `--hp` would take its text.
    pub fn set_json(&mut self, json: &str) -> Result<(), String> {
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("hyperparameters: not JSON: {e}"))?;
        let obj = v.as_object().ok_or("hyperparameters: expected a JSON object")?;
        for (k, v) in obj {
            self.set(k, &json_text(v))?;
        }
        Ok(())
    }

    /// Every hyperparameter as `NAME=VALUE` texts (`--hp` arguments), from the JSON form.
    pub fn to_hp_args(&self) -> Vec<String> {
        let v = serde_json::to_value(self).expect("hyperparameters serialize");
        v.as_object().expect("an object").iter().map(|(k, v)| format!("{k}={}", json_text(v))).collect()
    }

    /// Refuse values no run can use, naming the hyperparameter and its range.
    pub fn check(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        let mut need = |ok: bool, name: &str, what: &str| {
            if !ok {
                bad.push(format!("{name} must be {what}"));
            }
        };
        need(self.iterations >= 1, "iterations", "at least 1");
        need(self.world_size >= 1, "world_size", "at least 1");
        need(self.grad_accum >= 1, "grad_accum", "at least 1");
        for (name, v) in [("tied_embed_lr", self.tied_embed_lr), ("matrix_lr", self.matrix_lr), ("scalar_lr", self.scalar_lr)] {
            need(v >= 0.0, name, ">= 0");
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            need((0.0..1.0).contains(&v), name, "in [0, 1)");
        }
        need(self.adam_eps > 0.0, "adam_eps", "> 0");
        need(self.ns_eps > 0.0, "ns_eps", "> 0");
        need(self.weight_decay >= 0.0, "weight_decay", ">= 0");
        need(self.muon_weight_decay >= 0.0, "muon_weight_decay", ">= 0");
        for (name, v) in [("muon_momentum", self.muon_momentum), ("muon_momentum_warmup_start", self.muon_momentum_warmup_start)] {
            need((0.0..=1.0).contains(&v), name, "in [0, 1]");
        }
        need(self.muon_backend_steps <= 100, "muon_backend_steps", "at most 100");
        need(self.grad_clip_norm >= 0.0, "grad_clip_norm", ">= 0 (0: no clipping)");
        need(self.swa_start_frac >= 0.0, "swa_start_frac", ">= 0");
        need(!self.swa_enabled || self.swa_every >= 1, "swa_every", "at least 1 when SWA is enabled");
        need(self.sim_step_ms >= 0.0, "sim_step_ms", ">= 0");
        need(self.init == "train" || self.init == "dense", "init", "`train` or `dense`");
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("hyperparameters out of range: {}", bad.join("; ")))
        }
    }

    /// Micro-batches of one optimizer step, all ranks together.
    pub fn micro_batches(&self) -> u64 {
        self.world_size * self.grad_accum
    }

    /// The LR schedule runs by (real or simulated) wall clock.
    pub fn by_clock(&self) -> bool {
        self.max_wallclock_seconds > 0.0
    }
}

/// A JSON value as the text `--hp` takes (arrays as `a,b,c`).
fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(json_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_parses_by_name_and_refuses_unknown_names_and_bad_values() {
        let mut h = Hyper::default();
        h.set("ns_coeffs", "1,2,3").unwrap();
        assert_eq!(h.ns_coeffs, [1.0, 2.0, 3.0]);
        h.set("muon_nesterov", "false").unwrap();
        assert!(!h.muon_nesterov);
        h.set("iterations", "16").unwrap();
        assert_eq!(h.iterations, 16);
        assert!(h.set("iterationz", "1").unwrap_err().contains("unknown hyperparameter"));
        assert!(h.set("beta1", "x").unwrap_err().contains("beta1"));
        assert!(h.set("iterations", "-1").is_err());
        h.set("beta2", "1.5").unwrap();
        assert!(h.check().unwrap_err().contains("beta2 must be in [0, 1)"));
    }

    #[test]
    fn json_round_trips_through_hp_texts() {
        let mut h = Hyper::default();
        h.set_json(r#"{"iterations": 14, "ns_coeffs": [3.4445, -4.775, 2.0315], "muon_nesterov": true, "init": "dense", "adam_eps": 1e-08}"#).unwrap();
        assert_eq!((h.iterations, h.init.as_str(), h.adam_eps), (14, "dense", 1e-8));
        let mut g = Hyper::default();
        for a in h.to_hp_args() {
            let (k, v) = a.split_once('=').unwrap();
            g.set(k, v).unwrap();
        }
        assert_eq!(g, h);
    }
}
