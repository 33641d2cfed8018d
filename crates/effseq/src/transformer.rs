//! The Transformer backbone shared by the attention family: an optional input projection, position encodings,
//! `L` pre-norm blocks and a final LayerNorm. The attention inside each block is a parameter
//! ([`Mechanism`]), so one model type serves softmax attention, linear attention and the Performer.
//!
//! Each block is PyTorch's `nn.TransformerEncoderLayer(d_model, nhead, d_ff, activation="gelu",
//! batch_first=True, norm_first=True)` (Xiong et al. 2020, pre-LN):
//!
//! ```text
//! x = x + Dropout(SelfAttention(LayerNorm1(x)))
//! x = x + Dropout(Linear2(Dropout(GELU(Linear1(LayerNorm2(x))))))
//! ```
//!
//! and the stack is `nn.TransformerEncoder(layer, L, norm=LayerNorm(D))`, so parameter names match its state dict:
//! `layers.{i}.self_attn.in_proj_weight`, `layers.{i}.linear1.weight`, `layers.{i}.norm1.weight`, ...,
//! `norm.weight` (with the prefix given at construction, `transformer.` in a [`crate::model::Network`]).

use crate::attention::{AttentionConfig, AttentionState, Mechanism, MultiHeadAttention, StepScratch};
use crate::config::Positional;
use crate::error::{check_len, Error, Result};
use crate::layers::activation::{gelu_erf_backward, gelu_erf_forward};
use crate::layers::{Dropout, LayerNorm, Linear};
use crate::param::{Module, Param};
use crate::rng::{fill_normal, rng_for, streams, Rng};

/// Shape of a [`Transformer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransformerConfig {
    /// Features per input step D_in; when it differs from `d_model` an `encoder` Linear projects it.
    pub input: usize,
    /// Model width D.
    pub d_model: usize,
    /// Blocks L.
    pub layers: usize,
    /// Heads H.
    pub heads: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Dropout after the attention, inside and after the feed-forward layer.
    pub dropout: f32,
    /// The attention of every block.
    pub mechanism: Mechanism,
    /// Causal (language model, streaming) or bidirectional (classification).
    pub causal: bool,
    /// Position encoding.
    pub positional: Positional,
    /// Longest sequence with learned positions.
    pub max_len: usize,
    /// Performer: training steps between feature redraws (0 = never).
    pub redraw_every: u64,
}

impl TransformerConfig {
    fn attention(&self) -> AttentionConfig {
        AttentionConfig { mechanism: self.mechanism, d_model: self.d_model, heads: self.heads, causal: self.causal }
    }
}

/// One pre-norm block.
#[derive(Clone, Debug)]
struct Block {
    norm1: LayerNorm,
    attn: MultiHeadAttention,
    norm2: LayerNorm,
    /// `(d_ff, D)`.
    linear1: Linear,
    /// `(D, d_ff)`.
    linear2: Linear,
    /// After the attention, inside and after the feed-forward layer.
    drop_attn: Dropout,
    drop_ff: Dropout,
    drop_out: Dropout,
    /// Pre-activation of the feed-forward layer `(N, d_ff)`, kept for the GELU backward.
    ff_pre: Option<Vec<f32>>,
}

impl Block {
    fn new(cfg: &TransformerConfig, prefix: &str, rng: &mut Rng, seed: u64, layer: usize) -> Result<Block> {
        let d = cfg.d_model;
        Ok(Block {
            norm1: LayerNorm::new(&format!("{prefix}norm1"), d),
            attn: MultiHeadAttention::new(cfg.attention(), &format!("{prefix}self_attn."), rng, seed, layer)?,
            norm2: LayerNorm::new(&format!("{prefix}norm2"), d),
            linear1: Linear::new(&format!("{prefix}linear1"), d, cfg.d_ff, true, rng),
            linear2: Linear::new(&format!("{prefix}linear2"), cfg.d_ff, d, true, rng),
            drop_attn: Dropout::new(),
            drop_ff: Dropout::new(),
            drop_out: Dropout::new(),
            ff_pre: None,
        })
    }

    /// `x (N, D)` → `(N, D)`, N = B*T. `rng: Some` is training mode with dropout `p`.
    #[allow(clippy::too_many_arguments)]
    fn forward(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>, p: f32, mut rng: Option<&mut Rng>, train: bool) -> Result<Vec<f32>> {
        let n = b * t;
        let d = x.len() / n;
        let h1 = if train { self.norm1.forward(x, n)? } else { apply_norm(&self.norm1, x, n)? }; // (N, D)
        let mut a = self.attn.forward(&h1, b, t, lengths, train)?; // (N, D)
        drop(h1);
        self.drop_attn.forward(&mut a, p, rng.as_deref_mut())?;
        let mut x2 = a; // (N, D) x + attention
        x2.iter_mut().zip(x).for_each(|(s, &xi)| *s += xi);
        let h2 = if train { self.norm2.forward(&x2, n)? } else { apply_norm(&self.norm2, &x2, n)? }; // (N, D)
        let d_ff = self.linear1.c_out();
        let pre = if train {
            self.linear1.forward(&h2, n)?
        } else {
            let mut pre = vec![0.0f32; n * d_ff]; // (N, d_ff)
            self.linear1.apply(&h2, n, &mut pre)?;
            pre
        };
        drop(h2);
        let mut g = vec![0.0f32; n * d_ff]; // (N, d_ff) GELU(pre)
        gelu_erf_forward(&pre, &mut g);
        self.drop_ff.forward(&mut g, p, rng.as_deref_mut())?;
        let mut f = if train {
            self.linear2.forward(&g, n)?
        } else {
            let mut f = vec![0.0f32; n * d]; // (N, D)
            self.linear2.apply(&g, n, &mut f)?;
            f
        };
        self.drop_out.forward(&mut f, p, rng)?;
        f.iter_mut().zip(&x2).for_each(|(s, &xi)| *s += xi);
        self.ff_pre = train.then_some(pre);
        Ok(f)
    }

    /// Backward from `dy (N, D)` → `dx (N, D)`, accumulating parameter gradients.
    fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let pre = self.ff_pre.take().ok_or_else(|| Error::Invalid("transformer block backward without a training forward".into()))?;
        let mut df = dy.to_vec(); // (N, D)
        self.drop_out.backward(&mut df)?;
        let mut dg = self.linear2.backward(&df)?; // (N, d_ff)
        drop(df);
        self.drop_ff.backward(&mut dg)?;
        let mut dpre = vec![0.0f32; pre.len()]; // (N, d_ff)
        gelu_erf_backward(&pre, &dg, &mut dpre);
        drop((pre, dg));
        let dh2 = self.linear1.backward(&dpre)?; // (N, D)
        let mut dx2 = self.norm2.backward(&dh2)?; // (N, D)
        dx2.iter_mut().zip(dy).for_each(|(s, &g)| *s += g);
        let mut da = dx2.clone(); // (N, D)
        self.drop_attn.backward(&mut da)?;
        let dh1 = self.attn.backward(&da)?; // (N, D)
        let mut dx = self.norm1.backward(&dh1)?; // (N, D)
        dx.iter_mut().zip(&dx2).for_each(|(s, &g)| *s += g);
        Ok(dx)
    }

    fn params(&self) -> Vec<&Param> {
        let mut v = self.norm1.params();
        v.extend(self.attn.params());
        v.extend(self.norm2.params());
        v.extend(self.linear1.params());
        v.extend(self.linear2.params());
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.norm1.params_mut();
        v.extend(self.attn.params_mut());
        v.extend(self.norm2.params_mut());
        v.extend(self.linear1.params_mut());
        v.extend(self.linear2.params_mut());
        v
    }
}

fn apply_norm(norm: &LayerNorm, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let mut y = vec![0.0f32; x.len()]; // (N, D)
    norm.apply(x, n, &mut y)?;
    Ok(y)
}

/// Adds the sinusoidal encoding of position `pos` to `row (D)`: `PE(pos, 2i) = sin(pos / 10000^(2i/D))`,
/// `PE(pos, 2i+1) = cos(pos / 10000^(2i/D))` (Vaswani et al. 2017, sec. 3.5), computed in f64.
pub(crate) fn add_sinusoid(row: &mut [f32], pos: usize) {
    let d = row.len();
    for (i, pair) in row.chunks_mut(2).enumerate() {
        let angle = pos as f64 / 10000f64.powf(2.0 * i as f64 / d as f64);
        pair[0] += angle.sin() as f32;
        if let Some(c) = pair.get_mut(1) {
            *c += angle.cos() as f32;
        }
    }
}

/// The Transformer backbone: `(B, T, D_in)` → `(B, T, D)`.
#[derive(Clone, Debug)]
pub struct Transformer {
    cfg: TransformerConfig,
    /// Seed of the Performer's feature draws.
    seed: u64,
    /// `encoder.weight (D, D_in)`, `encoder.bias` when D_in != D.
    encoder: Option<Linear>,
    /// Learned positions `pos_embedding.weight (max_len, D)`.
    pos_embedding: Option<Param>,
    blocks: Vec<Block>,
    /// Final `norm`.
    norm: LayerNorm,
    /// The Performer feature draw in use.
    draw: u64,
    /// (B, T) of the last training forward.
    shape: Option<(usize, usize)>,
}

/// Streaming state of a [`Transformer`]: the position and each block's attention state, with step buffers.
#[derive(Clone, Debug)]
pub struct TransformerState {
    /// Sequences B.
    batch: usize,
    /// Position of the next token.
    pub position: usize,
    /// Per block: attention state and its scratch.
    attention: Vec<(AttentionState, StepScratch)>,
    /// `(B, D)` residual stream, normalised stream and sub-layer output.
    z: Vec<f32>,
    h: Vec<f32>,
    a: Vec<f32>,
    /// `(B, d_ff)` feed-forward pre-activation and activation.
    pre: Vec<f32>,
    g: Vec<f32>,
}

impl TransformerState {
    /// Tokens held in the key/value caches (softmax) or folded into the recurrent states (linear, Performer).
    pub fn context_len(&self) -> usize {
        self.position
    }
}

impl Transformer {
    /// A Transformer with parameter names under `prefix`, initialised from `seed` (`nn.Linear` and
    /// `nn.MultiheadAttention` initialisation, LayerNorm 1/0, learned positions N(0, 0.02)).
    pub fn with_prefix(cfg: &TransformerConfig, seed: u64, prefix: &str) -> Result<Transformer> {
        if cfg.d_model == 0 || cfg.layers == 0 || cfg.input == 0 || cfg.d_ff == 0 {
            return Err(Error::config("a Transformer needs positive input width, model width, layer count and feed-forward width"));
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(Error::config(format!("dropout must be in [0, 1), got {}", cfg.dropout)));
        }
        let mut rng = rng_for(seed, streams::INIT + 7);
        let encoder = (cfg.input != cfg.d_model).then(|| Linear::new(&format!("{prefix}encoder"), cfg.input, cfg.d_model, true, &mut rng));
        let pos_embedding = (cfg.positional == Positional::Learned).then(|| {
            let mut p = Param::zeros(format!("{prefix}pos_embedding.weight"), &[cfg.max_len, cfg.d_model]);
            fill_normal(&mut rng, &mut p.value, 0.02);
            p
        });
        let blocks = (0..cfg.layers).map(|i| Block::new(cfg, &format!("{prefix}layers.{i}."), &mut rng, seed, i)).collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(&format!("{prefix}norm"), cfg.d_model);
        Ok(Transformer { cfg: *cfg, seed, encoder, pos_embedding, blocks, norm, draw: 0, shape: None })
    }

    /// The configuration.
    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Called before training step `step`: a Performer draws new random features every `redraw_every` steps (draw
    /// `step / redraw_every`, a function of the seed, the layer and the draw only, so a resumed run redraws exactly
    /// what an uninterrupted one does).
    pub fn begin_train_step(&mut self, step: u64) {
        if !matches!(self.cfg.mechanism, Mechanism::Performer { .. }) || self.cfg.redraw_every == 0 {
            return;
        }
        let draw = step / self.cfg.redraw_every;
        if draw != self.draw {
            for (i, block) in self.blocks.iter_mut().enumerate() {
                block.attn.redraw_features(self.seed, i, draw);
            }
            self.draw = draw;
        }
    }

    /// Training forward (`train = true`, dropout from `rng`) or inference over `x (B, T, D_in)` → `(B, T, D)`.
    /// `lengths (B)`: valid steps of right-padded sequences.
    pub fn run(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>, mut rng: Option<&mut Rng>, train: bool) -> Result<Vec<f32>> {
        self.shape = None;
        let (d, n) = (self.cfg.d_model, b * t);
        check_len("transformer input (B, T, D_in)", &[b, t, self.cfg.input], x.len())?;
        if let Some(p) = &self.pos_embedding {
            if t > self.cfg.max_len {
                return Err(Error::Invalid(format!("sequence length {t} exceeds the learned positions (model.max_len = {}); {}", self.cfg.max_len, p.name)));
            }
        }
        let mut z = match &mut self.encoder {
            Some(enc) if train => enc.forward(x, n)?,
            Some(enc) => {
                let mut z = vec![0.0f32; n * d]; // (B, T, D)
                enc.apply(x, n, &mut z)?;
                z
            }
            None => x.to_vec(),
        }; // (B, T, D)
        for (row, i) in z.chunks_exact_mut(d).zip(0..) {
            let pos = i % t;
            match &self.pos_embedding {
                Some(p) => row.iter_mut().zip(&p.value[pos * d..(pos + 1) * d]).for_each(|(s, &e)| *s += e),
                None => add_sinusoid(row, pos),
            }
        }
        let p = if train { self.cfg.dropout } else { 0.0 };
        for block in &mut self.blocks {
            z = block.forward(&z, b, t, lengths, p, rng.as_deref_mut(), train)?;
        }
        let y = if train { self.norm.forward(&z, n)? } else { apply_norm(&self.norm, &z, n)? };
        if train {
            self.shape = Some((b, t));
        }
        Ok(y)
    }

    /// Backward from `dy (B, T, D)` → `dx (B, T, D_in)`, accumulating parameter gradients.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let (b, t) = self.shape.take().ok_or_else(|| Error::Invalid("transformer backward called without a training forward".into()))?;
        let d = self.cfg.d_model;
        check_len("transformer output gradient (B, T, D)", &[b, t, d], dy.len())?;
        let mut dz = self.norm.backward(dy)?; // (B, T, D)
        for block in self.blocks.iter_mut().rev() {
            dz = block.backward(&dz)?;
        }
        if let Some(p) = &mut self.pos_embedding {
            for (row, i) in dz.chunks_exact(d).zip(0..) {
                let pos = i % t;
                p.grad[pos * d..(pos + 1) * d].iter_mut().zip(row).for_each(|(g, &v)| *g += v);
            }
        }
        match &mut self.encoder {
            Some(enc) => enc.backward(&dz),
            None => Ok(dz),
        }
    }

    /// A zero streaming state for `b` sequences.
    pub fn zero_state(&self, b: usize) -> TransformerState {
        let d = self.cfg.d_model;
        TransformerState {
            batch: b,
            position: 0,
            attention: self.blocks.iter().map(|blk| blk.attn.zero_state(b)).collect(),
            z: vec![0.0; b * d],
            h: vec![0.0; b * d],
            a: vec![0.0; b * d],
            pre: vec![0.0; b * self.cfg.d_ff],
            g: vec![0.0; b * self.cfg.d_ff],
        }
    }

    /// One causal streaming step `x_t (B, D_in)` → `y_t (B, D)` at position `state.position`.
    pub fn step(&self, x_t: &[f32], state: &mut TransformerState, y_t: &mut [f32]) -> Result<()> {
        let (b, d) = (state.batch, self.cfg.d_model);
        check_len("transformer step input (B, D_in)", &[b, self.cfg.input], x_t.len())?;
        check_len("transformer step output (B, D)", &[b, d], y_t.len())?;
        if !self.cfg.causal {
            return Err(Error::Invalid("streaming needs a causal model; this one attends in both directions (model.bidirectional)".into()));
        }
        let pos = state.position;
        match &self.encoder {
            Some(enc) => enc.apply(x_t, b, &mut state.z)?,
            None => state.z.copy_from_slice(x_t),
        }
        for row in state.z.chunks_exact_mut(d) {
            match &self.pos_embedding {
                Some(p) if pos < self.cfg.max_len => row.iter_mut().zip(&p.value[pos * d..(pos + 1) * d]).for_each(|(s, &e)| *s += e),
                Some(_) => return Err(Error::Invalid(format!("position {pos} is past the learned positions (model.max_len = {})", self.cfg.max_len))),
                None => add_sinusoid(row, pos),
            }
        }
        for (block, (attn_state, scratch)) in self.blocks.iter().zip(&mut state.attention) {
            block.norm1.apply(&state.z, b, &mut state.h)?;
            block.attn.step(&state.h, attn_state, scratch, &mut state.a)?;
            state.z.iter_mut().zip(&state.a).for_each(|(s, &v)| *s += v);
            block.norm2.apply(&state.z, b, &mut state.h)?;
            block.linear1.apply(&state.h, b, &mut state.pre)?;
            gelu_erf_forward(&state.pre, &mut state.g);
            block.linear2.apply(&state.g, b, &mut state.a)?;
            state.z.iter_mut().zip(&state.a).for_each(|(s, &v)| *s += v);
        }
        self.norm.apply(&state.z, b, y_t)?;
        state.position += 1;
        Ok(())
    }

    /// The non-trained buffers (Performer projections), saved in checkpoints.
    pub fn buffers(&self) -> Vec<&Param> {
        self.blocks.iter().flat_map(|b| b.attn.buffers()).collect()
    }

    /// Mutable [`Transformer::buffers`].
    pub fn buffers_mut(&mut self) -> Vec<&mut Param> {
        self.blocks.iter_mut().flat_map(|b| b.attn.buffers_mut()).collect()
    }
}

impl Module for Transformer {
    fn params(&self) -> Vec<&Param> {
        let mut v: Vec<&Param> = Vec::new();
        if let Some(e) = &self.encoder {
            v.extend(e.params());
        }
        v.extend(self.pos_embedding.iter());
        for b in &self.blocks {
            v.extend(b.params());
        }
        v.extend(self.norm.params());
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = Vec::new();
        if let Some(e) = &mut self.encoder {
            v.extend(e.params_mut());
        }
        v.extend(self.pos_embedding.iter_mut());
        for b in &mut self.blocks {
            v.extend(b.params_mut());
        }
        v.extend(self.norm.params_mut());
        v
    }
}
