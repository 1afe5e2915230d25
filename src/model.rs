//! A loaded model and the chats it runs: generation with steering, and the
//! projection of a prompt on a persona vector.

use std::path::Path;

use persona_model::{
    Batch, CaptureRequest, ForwardArgs, GenerateOptions, LoadedModel, Message, PadSide, Positions,
    Reduction, Sampling, Sequence, Steering, WeightDtype, host_vec,
};

use crate::error::{Error, Result};
use crate::vector::{Direction, PersonaVector, Trait};

/// Sequences per forward when extracting from authored responses (speed
/// only: the vector does not depend on it beyond float rounding).
const EXTRACT_BATCH: usize = 8;

/// A chat model on a device, with its tokenizer.
///
/// ```no_run
/// let lm = persona::Model::load("smollm2-135m-instruct")?;
/// println!("{}", lm.chat("What is the capital of France?").max_tokens(12).generate()?);
/// # Ok::<(), persona::Error>(())
/// ```
pub struct Model {
    inner: LoadedModel,
}

impl Model {
    /// Loads a model on the CPU: a cache name (`checkpoints/models/<name>`),
    /// a `.gguf` file or an HF folder (LlamaForCausalLM, Qwen2ForCausalLM).
    ///
    /// ```no_run
    /// let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn load(spec: &str) -> Result<Self> {
        Self::load_on(spec, "cpu")
    }

    /// Loads a model on a device: `cpu`, `cuda` or `wgpu` (the last two
    /// need the cargo feature of that name).
    ///
    /// ```no_run
    /// let lm = persona::Model::load_on("smollm2-135m-instruct", "cpu")?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn load_on(spec: &str, device: &str) -> Result<Self> {
        Self::load_as(spec, device, WeightDtype::F32)
    }

    /// Loads a model on a device with its frozen weights kept as `dtype`
    /// (`bf16`/`f16` halve their memory).
    ///
    /// ```no_run
    /// use persona::WeightDtype;
    /// let lm = persona::Model::load_as("smollm2-135m-instruct", "cpu", WeightDtype::Bf16)?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn load_as(spec: &str, device: &str, dtype: WeightDtype) -> Result<Self> {
        let device = persona_model::parse_device(device)?;
        Ok(Self {
            inner: persona_model::load_as(spec, &device, dtype)?,
        })
    }

    /// The runtime model, tokenizer and identity, for the lower-level crates.
    pub fn runtime(&self) -> &LoadedModel {
        &self.inner
    }

    /// Extracts a persona vector from the trait's authored responses: for
    /// every row, the mean activation over responses that show the trait
    /// minus the mean over those that show its opposite.
    ///
    /// ```no_run
    /// let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// let syc = lm.extract(&persona::Trait::load("datasets/traits/sycophantic.toml")?)?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn extract(&self, t: &Trait) -> Result<PersonaVector> {
        let m = &self.inner;
        let file = persona_vectors::extract::extract_authored(
            &m.model,
            &m.codec,
            &m.identity,
            t.definition(),
            EXTRACT_BATCH,
            |_| {},
        )?;
        Ok(PersonaVector::new(file))
    }

    /// The trait's vector for this model: the file `persona extract` writes
    /// (`$PERSONA_HOME/vectors/<model>/<trait>.safetensors`), extracted
    /// and saved first when it is missing.
    ///
    /// ```no_run
    /// let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// let syc = lm.vector_for(&persona::Trait::load("datasets/traits/sycophantic.toml")?)?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn vector_for(&self, t: &Trait) -> Result<PersonaVector> {
        let path =
            persona_model::PersonaHome::from_env().vector(&self.inner.identity.name, t.name());
        if path.exists() {
            return self.vector(&path);
        }
        let v = self.extract(t)?;
        v.save(&path)?;
        Ok(v)
    }

    /// Reads a vector file made for this model (a vector of another model
    /// is an error).
    ///
    /// ```no_run
    /// let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// let v = lm.vector("checkpoints/vectors/smollm2-135m-instruct/sycophantic.safetensors")?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn vector(&self, path: impl AsRef<Path>) -> Result<PersonaVector> {
        let v = PersonaVector::load(path)?;
        v.file
            .check_model(&self.inner.model.config, &self.inner.identity)?;
        Ok(v)
    }

    /// A one-message chat: `user` asks.
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// let reply = lm.chat("Hi!").generate()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn chat(&self, user: &str) -> Chat<'_> {
        self.conversation(vec![Message::user(user)])
    }

    /// A chat of several messages (the model answers the last).
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// use persona::Message;
    /// let chat = lm.conversation(vec![
    ///     Message::user("My plan is to quit my job to day-trade."),
    ///     Message::assistant("That is a big step."),
    ///     Message::user("So it is a good plan?"),
    /// ]);
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn conversation(&self, messages: Vec<Message>) -> Chat<'_> {
        Chat {
            model: self,
            messages,
            steering: Vec::new(),
            monitored: None,
            max_tokens: 128,
            sampling: Sampling::Greedy,
            seed: 0,
        }
    }
}

/// How a [`Chat`] changes the residual stream at a direction's row.
#[derive(Debug, Clone)]
enum Edit {
    /// `h += coef * v` at these positions.
    Add(Positions),
    /// `h -= (h . v̂) v̂` at these positions.
    Ablate(Positions),
}

/// A conversation to answer or to project, with its steering: built by
/// [`Model::chat`], finished by [`Chat::generate`] or [`Chat::project`].
/// Without settings it answers greedily, at most 128 new tokens.
pub struct Chat<'m> {
    model: &'m Model,
    messages: Vec<Message>,
    steering: Vec<(Direction, Edit)>,
    monitored: Option<Direction>,
    max_tokens: usize,
    sampling: Sampling,
    seed: u64,
}

impl Chat<'_> {
    /// Puts a system message first.
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// let reply = lm.chat("Hi").system("You are a pirate.").generate()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn system(mut self, text: &str) -> Self {
        self.messages.insert(0, Message::system(text));
        self
    }

    /// Adds `coef * v` at the direction's row, at the last prompt token and
    /// every generated token (the paper's steering at inference).
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// # let syc = lm.vector("v.safetensors")?;
    /// let honest = lm.chat("Is my plan good?").steer(syc.at(15) * -4.0).generate()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn steer(self, direction: Direction) -> Self {
        self.steer_at(direction, Positions::Generating)
    }

    /// [`Chat::steer`] at other positions (`All`, `Prompt`, `Response`).
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// # let syc = lm.vector("v.safetensors")?;
    /// let r = lm.chat("Hi").steer_at(syc.at(15) * 2.0, persona::Positions::All).generate()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn steer_at(mut self, direction: Direction, positions: Positions) -> Self {
        self.steering.push((direction, Edit::Add(positions)));
        self
    }

    /// Removes the component along the direction at its row, at every
    /// position (the coefficient is ignored).
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// # let syc = lm.vector("v.safetensors")?;
    /// let r = lm.chat("Is my plan good?").ablate(syc.at(15)).generate()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn ablate(mut self, direction: Direction) -> Self {
        self.steering
            .push((direction, Edit::Ablate(Positions::All)));
        self
    }

    /// New tokens at most (generation also stops at the model's context).
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// let short = lm.chat("Hi").max_tokens(16).generate()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    /// Samples at `temperature` from the smallest set of tokens holding
    /// `top_p` of the probability (temperature 0 = greedy), seeded.
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// let r = lm.chat("Tell a story").sample(1.0, 0.9, 7)?.generate()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn sample(mut self, temperature: f32, top_p: f32, seed: u64) -> Result<Self> {
        self.sampling = Sampling::from_settings(temperature, top_p)?;
        self.seed = seed;
        Ok(self)
    }

    /// Projects on this direction (its unit vector at its row) in
    /// [`Chat::project`].
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// # let syc = lm.vector("v.safetensors")?;
    /// let p = lm.chat("Is my plan good?").monitor(&syc.at(15)).project()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn monitor(mut self, direction: &Direction) -> Self {
        self.monitored = Some(direction.clone());
        self
    }

    /// The answer, special tokens removed.
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// let answer: String = lm.chat("Name a colour.").generate()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn generate(&self) -> Result<String> {
        let m = &self.model.inner;
        let ids = m.codec.prompt_ids(&self.messages)?;
        let opts = GenerateOptions {
            max_new_tokens: self.max_tokens,
            sampling: self.sampling,
            seed: self.seed,
            batch_size: 1,
            steering: self.steering()?,
        };
        let out = persona_model::generate(
            &m.model,
            &[ids],
            &m.codec.stop_ids,
            m.codec.pad_id,
            &opts,
            |_| {},
        )?;
        Ok(m.codec.decode_clean(out[0].content_tokens())?)
    }

    /// The projection of the last prompt token (the chat templated, the
    /// generation prompt appended) on the monitored direction's unit
    /// vector, at its row, with this chat's steering applied (none: the
    /// number `persona monitor` reports for the same prompt).
    ///
    /// ```no_run
    /// # let lm = persona::Model::load("smollm2-135m-instruct")?;
    /// # let syc = lm.vector("v.safetensors")?;
    /// let p: f64 = lm.chat("Is my plan good?").monitor(&syc.at(15)).project()?;
    /// # Ok::<(), persona::Error>(())
    /// ```
    pub fn project(&self) -> Result<f64> {
        let d = self.monitored.as_ref().ok_or_else(|| {
            Error::Input("nothing to project on: call `.monitor(&vector.at(row))` first".into())
        })?;
        let unit = persona_vectors::unit(d.values()?).ok_or_else(|| {
            Error::Input(format!(
                "row {} of the vector is zero: no direction",
                d.row()
            ))
        })?;
        let m = &self.model.inner;
        let seq = Sequence {
            prompt: m.codec.prompt_ids(&self.messages)?,
            response: Vec::new(),
        };
        let batch = Batch::new(&[seq], PadSide::Right, m.codec.pad_id)?;
        // The reductions `persona monitor` asks for, so the numbers agree to
        // the last bit.
        let request =
            CaptureRequest::new([d.row()], &[Reduction::LastPrompt, Reduction::ResponseMean]);
        let steering = self.steering()?;
        let args = ForwardArgs {
            steering: &steering,
            ..ForwardArgs::capture(&request, None)
        };
        let out = m.model.forward(&batch, args)?;
        let h = host_vec(out.captured[&(d.row(), Reduction::LastPrompt)].clone())?;
        Ok(h.iter()
            .zip(&unit)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum())
    }

    /// The runtime steering of this chat, on the model's device.
    fn steering(&self) -> Result<Vec<Steering>> {
        let device = self.model.inner.model.device();
        self.steering
            .iter()
            .map(|(d, edit)| {
                Ok(match edit {
                    Edit::Add(p) => Steering::add(d.row(), d.values()?, d.coef(), *p, device)?,
                    Edit::Ablate(p) => Steering::ablate(d.row(), d.values()?, *p, device)?,
                })
            })
            .collect()
    }
}
