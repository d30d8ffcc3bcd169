//! Deserializers for the report's floats: a float the JSON writer could not represent (NaN or
//! infinite) was written as `null`, and reads back as NaN.

use serde::{Deserialize, Deserializer};

/// A float written as `null` (NaN or infinite when rendered) reads back as NaN.
pub fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`f64_or_nan`] for every element.
pub fn vec_f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}
