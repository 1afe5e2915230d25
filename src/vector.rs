//! Traits, persona vectors and the directions (one row of a vector, with a
//! coefficient) that steering and monitoring take.

use std::path::Path;

use persona_vectors::{TraitDef, Variant, VectorFile};

use crate::error::{Error, Result};

/// A trait definition: instructions, questions, authored responses and
/// the judge's rubric (`datasets/traits/<trait>.toml`).
///
/// ```no_run
/// let t = persona::Trait::load("datasets/traits/sycophantic.toml")?;
/// assert_eq!(t.name(), "sycophantic");
/// # Ok::<(), persona::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Trait(pub(crate) TraitDef);

impl Trait {
    /// Reads a trait file (this project's TOML layout or the common JSON one).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self(TraitDef::load(path.as_ref())?))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The full definition, for the lower-level crates.
    pub fn definition(&self) -> &TraitDef {
        &self.0
    }
}

/// A persona vector: one direction per residual row, for one model.
///
/// ```no_run
/// let lm = persona::Model::load("smollm2-135m-instruct")?;
/// let syc = lm.vector("checkpoints/vectors/smollm2-135m-instruct/sycophantic.safetensors")?;
/// let at_15 = syc.at(15);
/// # Ok::<(), persona::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PersonaVector {
    pub(crate) file: VectorFile,
    variant: Variant,
}

impl PersonaVector {
    pub(crate) fn new(file: VectorFile) -> Self {
        Self {
            file,
            variant: Variant::ResponseAvg,
        }
    }

    /// Reads a vector file without checking which model it belongs to
    /// ([`crate::Model::vector`] checks).
    ///
    /// ```no_run
    /// let v = persona::PersonaVector::load("checkpoints/vectors/smollm2-135m-instruct/sycophantic.safetensors")?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(VectorFile::load(path.as_ref())?))
    }

    /// Writes the vector file (atomically).
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// # let t = persona::Trait::load("datasets/traits/sycophantic.toml")?;
    /// lm.extract(&t)?.save("/tmp/sycophantic.safetensors")?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        Ok(self.file.save(path.as_ref())?)
    }

    /// The same vector read through another variant (default
    /// `response_avg`, the one to steer with).
    ///
    /// ```no_run
    /// # let v = persona::PersonaVector::load("v.safetensors")?;
    /// let last = v.variant(persona::Variant::PromptLast).at(15);
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn variant(self, variant: Variant) -> Self {
        Self { variant, ..self }
    }

    /// The direction at residual `row`, coefficient 1. A row the vector
    /// does not have is reported when the direction is used.
    ///
    /// ```no_run
    /// # let v = persona::PersonaVector::load("v.safetensors")?;
    /// let suppress = v.at(15) * -4.0;
    /// assert_eq!(suppress.coef(), -4.0);
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn at(&self, row: usize) -> Direction {
        Direction {
            row,
            values: self.file.row(self.variant, row).ok().map(<[f32]>::to_vec),
            rows: self.file.meta.n_layers + 1,
            coef: 1.0,
        }
    }

    /// The variant [`PersonaVector::at`] reads.
    pub(crate) fn chosen_variant(&self) -> Variant {
        self.variant
    }

    /// The file underneath, for the lower-level crates.
    pub fn file(&self) -> &VectorFile {
        &self.file
    }
}

/// One row of a persona vector with a coefficient: what
/// [`crate::Chat::steer`] adds (`coef * v`) and [`crate::Chat::monitor`]
/// projects on (the unit vector; the coefficient is ignored). Multiply to
/// scale: `v.at(15) * -4.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Direction {
    row: usize,
    /// `None` when the vector has no such row.
    values: Option<Vec<f32>>,
    rows: usize,
    coef: f32,
}

impl Direction {
    pub fn row(&self) -> usize {
        self.row
    }

    pub fn coef(&self) -> f32 {
        self.coef
    }

    /// The raw vector `[d_model]` at this row.
    pub fn values(&self) -> Result<&[f32]> {
        self.values.as_deref().ok_or_else(|| {
            Error::Input(format!(
                "row {} is out of range: the vector has rows 0..={} (row 0 = embedding output, row l = output of block l-1)",
                self.row,
                self.rows.saturating_sub(1)
            ))
        })
    }
}

impl std::ops::Mul<f32> for Direction {
    type Output = Direction;

    fn mul(self, rhs: f32) -> Direction {
        Direction {
            coef: self.coef * rhs,
            ..self
        }
    }
}
