//! Magnitude pruning after training (TRAINING.md section 12, step 2): every
//! parameter with 2 dimensions and more than 65,536 elements loses the
//! elements with `|W| < tau`, `tau` the p-quantile of `|W|` (linear
//! interpolation at position `p * (n - 1)`), `p = 0.05` for names with
//! `.mlp.`, else `0.03`.

use pgc_runtime::artifact::percentile_sorted;

/// The fraction section 12 prunes from parameter `name` of `shape` (0 when it is not pruned).
pub fn fraction(name: &str, shape: &[usize]) -> f64 {
    let n: usize = shape.iter().product();
    if shape.len() != 2 || n <= 65_536 {
        0.0
    } else if name.contains(".mlp.") {
        0.05
    } else {
        0.03
    }
}

/// Prune `values` (one tensor) at fraction `p`; returns how many elements it zeroed.
pub fn prune(values: &mut [f64], p: f64) -> usize {
    if p <= 0.0 || values.is_empty() {
        return 0;
    }
    // The record computes tau in fp32.
    let mut mags: Vec<f64> = values.iter().map(|&v| (v as f32).abs() as f64).collect();
    mags.sort_by(f64::total_cmp);
    let tau = percentile_sorted(&mags, 100.0 * p) as f32;
    let mut zeroed = 0;
    for v in values.iter_mut() {
        if (*v as f32).abs() < tau {
            *v = 0.0;
            zeroed += 1;
        }
    }
    zeroed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_parameters_and_how_much() {
        assert_eq!(fraction("blocks.0.mlp.fc.weight", &[1536, 512]), 0.05);
        assert_eq!(fraction("blocks.0.attn.c_q.weight", &[512, 512]), 0.03);
        // bigram.proj.weight of the record: exactly 65,536 elements, kept.
        assert_eq!(fraction("bigram.proj.weight", &[512, 128]), 0.0);
        assert_eq!(fraction("blocks.0.mlp.scale", &[100_000]), 0.0);
    }

    #[test]
    fn zeroes_below_the_interpolated_quantile() {
        // |W| = 0..=10; p = 0.05 puts tau at position 0.5, between 0 and 1: only the 0 is below.
        let mut v: Vec<f64> = (0..=10).map(|i| if i % 2 == 0 { i as f64 } else { -(i as f64) }).collect();
        assert_eq!(prune(&mut v, 0.05), 1);
        // p = 0.3: position 3.0, tau = 3: 0, -1, 2 go.
        let mut w: Vec<f64> = (0..=10).map(|i| if i % 2 == 0 { i as f64 } else { -(i as f64) }).collect();
        assert_eq!(prune(&mut w, 0.3), 3);
        assert_eq!(&w[..5], &[0.0, 0.0, 0.0, -3.0, 4.0]);
    }
}
