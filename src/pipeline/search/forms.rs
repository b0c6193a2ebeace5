//! The pass each search form adds after the recipe's own: its op types, the layers the
//! fallback leaves in float, and the search's `minElements` and calibration.

use crate::api::{Fp16Spec, PassSpec, QuantMode, QuantizeSpec, SearchForm, SearchPlan, WeightType};

/// Every op kompress quantizes.
const ALL_OPS: [&str; 5] = ["MatMul", "Gemm", "Conv", "ConvTranspose", "Gather"];

/// The pass `form` adds, with `float_layers` left in float (node names for the quantize
/// forms, tensor names for fp16).
pub fn pass(form: SearchForm, s: &SearchPlan, float_layers: &[String]) -> PassSpec {
    let q = |mode, weights, ops: &[&str]| {
        PassSpec::Quantize(QuantizeSpec {
            mode,
            weights,
            ops: Some(
                s.ops
                    .clone()
                    .unwrap_or_else(|| ops.iter().map(|o| o.to_string()).collect()),
            ),
            exclude_nodes: float_layers.to_vec(),
            min_elements: Some(s.min_elements),
            calibration: (mode == QuantMode::Static)
                .then(|| s.calibration.clone())
                .flatten(),
            ..Default::default()
        })
    };
    // Conv has no 4-bit kernel and no integer ConvTranspose kernel exists: those forms leave
    // them out unless `ops` names them (then they are skipped with a reason).
    match form {
        SearchForm::Int4 => q(
            QuantMode::WeightOnly,
            WeightType::Int4,
            &["MatMul", "Gemm", "Gather"],
        ),
        SearchForm::Static => q(
            QuantMode::Static,
            WeightType::Int8,
            &["MatMul", "Gemm", "Conv", "Gather"],
        ),
        SearchForm::Dynamic => q(QuantMode::Dynamic, WeightType::Int8, &ALL_OPS),
        SearchForm::WeightOnly => q(QuantMode::WeightOnly, WeightType::Int8, &ALL_OPS),
        SearchForm::Fp16 => PassSpec::Fp16(Fp16Spec {
            min_elements: None,
            exclude_tensors: float_layers.to_vec(),
            tensors: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SearchSpec;

    fn min_elements(p: PassSpec) -> Option<u64> {
        match p {
            PassSpec::Quantize(q) => q.min_elements,
            PassSpec::Fp16(f) => f.min_elements,
            other => panic!("unexpected pass {}", other.key()),
        }
    }

    /// The search's quantize forms take every weight by default (the fallback reverts what
    /// hurts), `search.minElements` overrides it, and fp16 keeps its own default.
    #[test]
    fn search_forms_carry_their_min_elements() {
        let mut s = SearchSpec::default();
        for form in [
            SearchForm::Int4,
            SearchForm::Static,
            SearchForm::Dynamic,
            SearchForm::WeightOnly,
        ] {
            let p = pass(form, &SearchPlan::of(&s), &[]);
            assert_eq!(min_elements(p), Some(1), "{}", form.name());
        }
        let fp16 = pass(SearchForm::Fp16, &SearchPlan::of(&s), &[]);
        assert_eq!(min_elements(fp16), None);
        s.min_elements = Some(4096);
        let p = pass(SearchForm::Static, &SearchPlan::of(&s), &[]);
        assert_eq!(min_elements(p), Some(4096));
    }
}
