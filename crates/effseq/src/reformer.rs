//! The Reformer's reversible residual stack with chunked feed-forward layers (Kitaev, Kaiser & Levskaya 2020,
//! "Reformer: The Efficient Transformer", sec. 4), built on reversible residual networks (Gomez et al. 2017,
//! "The Reversible Residual Network", eq. 1-2).
//!
//! ## The function
//! The embedded input `x (B, T, D)` (an `encoder` Linear when `D_in != D`, plus sinusoidal or learned positions,
//! as in [`crate::transformer`]) is duplicated into two streams `X1 = X2 = x` (reformer-pytorch:
//! `torch.cat([x, x], dim=-1)`), and every layer `l` maps `(X1, X2)` to `(Y1, Y2)` (Reformer eq. 5-6, pre-norm):
//!
//! ```text
//! Y1 = X1 + F(X2),  F(X2) = Dropout(Attention(LayerNorm_attn(X2)))
//! Y2 = X2 + G(Y1),  G(Y1) = W2 Dropout(GELU(W1 LayerNorm_ff(Y1) + b1)) + b2
//! ```
//!
//! The output is the mean of the two streams (reformer-pytorch: `torch.stack(x.chunk(2, dim=-1)).mean(dim=0)`)
//! followed by a final LayerNorm. The dropouts are reformer-pytorch's `post_attn_dropout` and `ff_dropout`, both
//! set to the configured `dropout`; GELU is the exact (erf) form, `nn.GELU()`.
//!
//! ## Reversibility (memory independent of the depth)
//! A layer's inputs follow from its outputs: `X2 = Y2 - G(Y1)`, then `X1 = Y1 - F(X2)` (Gomez et al. eq. 3). In
//! reversible mode (`reversible: true`) the training forward keeps nothing per layer: every sub-layer runs without
//! saving its internals, and only the last layer's `(Y1, Y2)` is kept (plus the final norm's and the encoder's
//! inputs, which do not depend on the depth either). The backward walks the layers from the top, recomputing
//! `G(Y1)` with its internals, back-propagating through it, reconstructing `X2`, then the same for `F(X2)` and `X1`
//! (Gomez et al. Algorithm 1):
//!
//! ```text
//! dY1 += G'(Y1)^T dY2;  X2 = Y2 - G(Y1);  dX1 = dY1
//! dX2 = dY2 + F'(X2)^T dX1;  X1 = Y1 - F(X2)
//! ```
//!
//! Recomputation must reproduce the forward bit for bit, so nothing random comes from a running generator: the
//! dropout mask of sub-layer `s` of layer `l` at training step `step` is a function of `(seed, step, l, s)` and of
//! the element's index only (element `i` of the mask is word `i` of the ChaCha8 stream
//! `rng_for(seed, sublayer_stream(step, l, s))`), and the attention's `hash_seed` (LSH attention) is drawn from
//! its own stream of `(seed, step, l)`. The reconstructed inputs equal the originals up to f32 rounding
//! (`(x + f) - f` need not be `x`), so the gradients of the two modes agree to rounding, not bitwise.
//!
//! With `reversible: false` the same function runs with ordinary stored activations (every sub-layer keeps what its
//! backward needs, as autograd would): the correctness reference and the memory baseline.
//! [`Reformer::saved_activation_bytes`] reports what either mode keeps for the backward.
//!
//! ## Chunked feed-forward (sec. 4, "Chunking")
//! `G` acts on each position independently, so it is evaluated on `ff_chunks` row blocks of the `B*T` positions
//! (reformer-pytorch's `Chunk(ff_chunks, FeedForward, along_dim=-2)`: `ff_chunks` is the NUMBER of chunks; each
//! holds `ceil(B*T / ff_chunks)` rows, the same number as torch's `ceil(T / ff_chunks)` rows of every sequence):
//! the `(rows, d_ff)` activations exist for one chunk at a time, never for the whole sequence. The reversible
//! backward is chunked the same way (each chunk's pre-activation is recomputed, used and dropped). A chunk's
//! dropout mask is the slice of the whole mask at its row offset (the stream is seeked to the chunk's first
//! element), so the result does not depend on `ff_chunks`. The plain mode keeps the whole `(B*T, d_ff)`
//! activations for its backward anyway, so its training forward runs `G` unchunked.
//!
//! ## Attention
//! The stack is generic over its attention through the [`ReversibleAttention`] trait, held as
//! `Box<dyn ReversibleAttention>` so that one `Reformer` type (and one `Network` variant) serves every attention,
//! chosen at run time from the configuration; the virtual call per layer and step costs nothing next to the
//! attention itself. [`Reformer::with_prefix`] builds exact softmax attention ([`MultiHeadAttention`]);
//! [`Reformer::with_attention`] takes a constructor for any other (LSH attention).
//!
//! ## Parameter names
//! Under the prefix given at construction: `encoder.weight (D, D_in)`, `encoder.bias` (when `D_in != D`),
//! `pos_embedding.weight (max_len, D)` (learned positions), and per layer `layers.{i}.norm_attn.{weight,bias}`,
//! `layers.{i}.attn.*` (softmax: `in_proj_weight (3D, D)`, `in_proj_bias`, `out_proj.weight`, `out_proj.bias`),
//! `layers.{i}.norm_ff.{weight,bias}`, `layers.{i}.ff.w1.{weight (d_ff, D), bias}`,
//! `layers.{i}.ff.w2.{weight (D, d_ff), bias}`, then the final `norm.{weight,bias}` (reformer-pytorch's
//! `FeedForward.w1/w2` and the `norm` after the stack; its `PreNorm` modules become `norm_attn` / `norm_ff`).
//!
//! ## Streaming
//! No `zero_state`/`step`: LSH attention has no incremental form, so a causal [`crate::model::Network`] built on
//! this stack generates by re-running the causal prefix.

use rand::RngCore as _;

use crate::attention::lsh::{LshConfig, LshSelfAttention};
use crate::attention::{AttentionConfig, Mechanism, MultiHeadAttention};
use crate::config::Positional;
use crate::error::{check_len, Error, Result};
use crate::layers::activation::{gelu_erf_backward, gelu_erf_forward};
use crate::layers::{LayerNorm, Linear};
use crate::param::{Module, Param};
use crate::rng::{fill_normal, rng_for, streams, Rng};
use crate::transformer::add_sinusoid;

/// Bytes of one `f32`.
const F32_BYTES: usize = std::mem::size_of::<f32>();

/// Sub-layer tags of [`sublayer_stream`]: the attention's output dropout, the feed-forward dropout, the hash seed.
const DROPOUT_ATTN: u64 = 0;
const DROPOUT_FF: u64 = 1;
const HASH_SEED: u64 = 2;

/// An attention the reversible stack can drive: a training forward that keeps what its backward needs, a backward
/// that consumes it, and a forward that keeps nothing.
///
/// Contract (what the reversible recomputation relies on): `forward` must be a deterministic function of the
/// parameters, `x`, `lengths`, `hash_seed` and `n_hashes_override`, and `train` may only decide whether the
/// buffers for [`ReversibleAttention::backward`] are kept: the stack runs `train = false` in the reversible forward
/// sweep and `train = true` when it recomputes the layer during the backward, and the two must give the same output
/// bit for bit. Attention-internal dropout, if any, must likewise derive from `hash_seed`.
pub trait ReversibleAttention: Module + std::fmt::Debug + Send + Sync {
    /// Self-attention over `x (B*T, D)` → `(B*T, D)`. `lengths (B)`: valid steps of right-padded sequences.
    /// `hash_seed`: the seed of this call's random hashes (ignored by exact attention); `n_hashes_override`: a
    /// number of hash rounds replacing the configured one (ignored by exact attention). `train` keeps what
    /// [`ReversibleAttention::backward`] needs.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        x: &[f32],
        b: usize,
        t: usize,
        lengths: Option<&[usize]>,
        hash_seed: u64,
        n_hashes_override: Option<usize>,
        train: bool,
    ) -> Result<Vec<f32>>;

    /// Backward from `dy (B*T, D)` → `dx (B*T, D)` for the last training forward, accumulating parameter gradients.
    fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>>;

    /// Frees every buffer still held from the last training forward or backward, so that a layer whose backward is
    /// done holds nothing while the layers below it are processed.
    fn release(&mut self) -> Result<()>;

    /// Bytes a training forward over `(B, T)` keeps for the backward.
    fn saved_bytes(&self, b: usize, t: usize) -> usize;

    /// A boxed copy (makes `Box<dyn ReversibleAttention>` clonable).
    fn clone_box(&self) -> Box<dyn ReversibleAttention>;
}

impl Clone for Box<dyn ReversibleAttention> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

impl ReversibleAttention for MultiHeadAttention {
    fn forward(
        &mut self,
        x: &[f32],
        b: usize,
        t: usize,
        lengths: Option<&[usize]>,
        _hash_seed: u64,
        _n_hashes_override: Option<usize>,
        train: bool,
    ) -> Result<Vec<f32>> {
        MultiHeadAttention::forward(self, x, b, t, lengths, train)
    }

    fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        MultiHeadAttention::backward(self, dy)
    }

    fn release(&mut self) -> Result<()> {
        // The projections keep their last input until their next training forward; a training forward over zero
        // rows replaces those inputs by empty buffers, and an evaluation forward then clears the attention cache.
        MultiHeadAttention::forward(self, &[], 0, 0, None, true)?;
        MultiHeadAttention::forward(self, &[], 0, 0, None, false).map(drop)
    }

    fn saved_bytes(&self, b: usize, t: usize) -> usize {
        let cfg = self.config();
        let (n, d, bh) = (b * t, cfg.d_model, b * cfg.heads);
        // q, k, v, the head outputs, the input projection's input and the output projection's input: (N, D) each.
        let planes = 6 * n * d;
        let mechanism = match cfg.mechanism {
            // The log-sum-exp of every query row (B, H, T).
            Mechanism::Softmax => bh * t,
            // Feature maps (B, H, T, F) of queries and keys, the normaliser (B, H, T) and the causal key decay.
            Mechanism::Linear => 2 * bh * t * cfg.feature_dim() + bh * t,
            Mechanism::Performer { .. } => 2 * bh * t * cfg.feature_dim() + bh * t + if cfg.causal { bh * t } else { 0 },
        };
        (planes + mechanism) * F32_BYTES
    }

    fn clone_box(&self) -> Box<dyn ReversibleAttention> {
        Box::new(self.clone())
    }
}

impl ReversibleAttention for LshSelfAttention {
    fn forward(
        &mut self,
        x: &[f32],
        b: usize,
        t: usize,
        lengths: Option<&[usize]>,
        hash_seed: u64,
        n_hashes_override: Option<usize>,
        train: bool,
    ) -> Result<Vec<f32>> {
        LshSelfAttention::forward(self, x, b, t, lengths, hash_seed, n_hashes_override, train)
    }

    fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        LshSelfAttention::backward(self, dy)
    }

    fn release(&mut self) -> Result<()> {
        // As for exact attention: a training forward over zero rows empties the projections' kept inputs, and an
        // evaluation forward drops the hash cache.
        LshSelfAttention::forward(self, &[], 0, 0, None, 0, None, true)?;
        LshSelfAttention::forward(self, &[], 0, 0, None, 0, None, false).map(drop)
    }

    fn saved_bytes(&self, b: usize, t: usize) -> usize {
        let cfg = self.config();
        let (n, d, rounds) = (b * t, cfg.d_model, cfg.n_hashes);
        let slots = b * cfg.heads * rounds * t.div_ceil(cfg.bucket_size.max(1)) * cfg.bucket_size; // (B, H, R, T_p)
                                                                                                   // The inputs of toqk, tov and to_out, the split qk and v: (N, D) each; every round's output (B, H, R, T_p, Dh);
                                                                                                   // the log-sum-exp (f32) and the sorted order (u32) of every slot.
        (5 * n * d + slots * (cfg.head_dim() + 2)) * F32_BYTES
    }

    fn clone_box(&self) -> Box<dyn ReversibleAttention> {
        Box::new(self.clone())
    }
}

/// Shape of a [`Reformer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReformerConfig {
    /// Features per input step D_in; when it differs from `d_model` an `encoder` Linear projects it.
    pub input: usize,
    /// Model width D (each of the two streams).
    pub d_model: usize,
    /// Reversible layers L.
    pub layers: usize,
    /// Attention heads H.
    pub heads: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Dropout after the attention and after the feed-forward activation.
    pub dropout: f32,
    /// Causal (language model) or bidirectional attention.
    pub causal: bool,
    /// Position encoding.
    pub positional: Positional,
    /// Longest sequence with learned positions.
    pub max_len: usize,
    /// LSH attention: positions per hash bucket (unused by exact attention).
    pub bucket_size: usize,
    /// LSH attention: hash rounds (unused by exact attention).
    pub n_hashes: usize,
    /// Number of row chunks the feed-forward layer is evaluated in (reformer-pytorch's `ff_chunks`; 1 = whole).
    pub ff_chunks: usize,
    /// Reconstruct the layer inputs in the backward (true) or store them (false, the reference).
    pub reversible: bool,
}

impl ReformerConfig {
    fn validate(&self) -> Result<()> {
        if self.d_model == 0 || self.layers == 0 || self.input == 0 || self.d_ff == 0 {
            return Err(Error::config("a Reformer needs positive input width, model width, layer count and feed-forward width"));
        }
        if self.ff_chunks == 0 {
            return Err(Error::config("a Reformer needs at least one feed-forward chunk (ff_chunks >= 1)"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(format!("dropout must be in [0, 1), got {}", self.dropout)));
        }
        if self.positional == Positional::Learned && self.max_len == 0 {
            return Err(Error::config("learned positions need max_len >= 1"));
        }
        Ok(())
    }

    /// The LSH-attention configuration of one layer (buckets chosen from the sequence length at each call).
    pub fn lsh_attention(&self) -> LshConfig {
        LshConfig { bucket_size: self.bucket_size, n_hashes: self.n_hashes, ..LshConfig::new(self.d_model, self.heads, self.causal) }
    }

    /// The exact-attention configuration of one layer.
    pub fn softmax_attention(&self) -> AttentionConfig {
        AttentionConfig { mechanism: Mechanism::Softmax, d_model: self.d_model, heads: self.heads, causal: self.causal }
    }
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce5_e9b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ChaCha8 stream of sub-layer `sublayer` of layer `layer` at training step `step`: a hash of the three, so
/// that no two (step, layer, sub-layer) share a stream and none coincides with the crate's small tagged streams.
pub fn sublayer_stream(step: u64, layer: usize, sublayer: u64) -> u64 {
    let tagged = splitmix64(streams::DROPOUT ^ splitmix64(step));
    splitmix64(tagged ^ splitmix64(((layer as u64) << 8) | sublayer))
}

/// The hash seed layer `layer`'s attention gets at step `step` under `seed`.
pub fn layer_hash_seed(seed: u64, step: u64, layer: usize) -> u64 {
    rng_for(seed, sublayer_stream(step, layer, HASH_SEED)).next_u64()
}

/// Inverted-dropout factors (`0` or `1 / (1 - p)`) of elements `offset..offset + len` of the mask of `stream`:
/// element `i` is dropped when `u_i < p`, `u_i` the top 24 bits of word `i` of `rng_for(seed, stream)` over 2^24
/// (the draw of `rand`'s `f32`). Seeking to `offset` makes any slice of the mask reproducible on its own.
pub fn dropout_factors(seed: u64, stream: u64, offset: usize, len: usize, p: f32) -> Vec<f32> {
    let mut rng = rng_for(seed, stream);
    rng.set_word_pos(offset as u128);
    let keep = 1.0 / (1.0 - p);
    (0..len)
        .map(|_| {
            let u = (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
            if u < p {
                0.0
            } else {
                keep
            }
        })
        .collect()
}

/// What every layer of one forward or backward pass needs to know.
#[derive(Clone, Copy, Debug)]
struct PassContext<'a> {
    b: usize,
    t: usize,
    lengths: Option<&'a [usize]>,
    /// Dropout probability in effect (0 when evaluating).
    p: f32,
    seed: u64,
    step: u64,
    n_hashes_override: Option<usize>,
    /// Rows per feed-forward chunk.
    chunk_rows: usize,
}

impl PassContext<'_> {
    fn rows(&self) -> usize {
        self.b * self.t
    }

    /// Dropout factors of `len` elements from `offset` of sub-layer `sublayer` of layer `layer`; `None` when off.
    fn mask(&self, layer: usize, sublayer: u64, offset: usize, len: usize) -> Option<Vec<f32>> {
        (self.p > 0.0).then(|| dropout_factors(self.seed, sublayer_stream(self.step, layer, sublayer), offset, len, self.p))
    }
}

/// Multiplies `x` by the dropout factors, when there are any.
fn apply_mask(x: &mut [f32], mask: Option<&[f32]>) {
    if let Some(m) = mask {
        x.iter_mut().zip(m).for_each(|(v, &f)| *v *= f);
    }
}

/// Replaces the input a LayerNorm keeps for its backward by empty buffers.
fn release_norm(norm: &mut LayerNorm) -> Result<()> {
    norm.forward(&[], 0).map(drop)
}

/// Replaces the input a Linear keeps for its backward by an empty buffer.
fn release_linear(linear: &mut Linear) -> Result<()> {
    linear.forward(&[], 0).map(drop)
}

/// What a plain-mode layer keeps besides its sub-layers' own caches.
#[derive(Clone, Debug)]
struct PlainSaved {
    /// Dropout factors of the attention output `(N, D)`.
    attn_mask: Option<Vec<f32>>,
    /// Feed-forward pre-activation `(N, d_ff)`.
    ff_pre: Vec<f32>,
    /// Dropout factors of the feed-forward activation `(N, d_ff)`.
    ff_mask: Option<Vec<f32>>,
}

/// One reversible layer: `F` = attention with its norm, `G` = feed-forward with its norm.
#[derive(Clone, Debug)]
struct ReversibleLayer {
    /// Index of the layer (its random streams).
    index: usize,
    norm_attn: LayerNorm,
    attn: Box<dyn ReversibleAttention>,
    norm_ff: LayerNorm,
    /// `(d_ff, D)`.
    w1: Linear,
    /// `(D, d_ff)`.
    w2: Linear,
    /// Plain mode: what the last training forward kept beyond the sub-layer caches.
    plain: Option<PlainSaved>,
}

impl ReversibleLayer {
    fn d_ff(&self) -> usize {
        self.w1.c_out()
    }

    fn hash_seed(&self, ctx: &PassContext) -> u64 {
        layer_hash_seed(ctx.seed, ctx.step, self.index)
    }

    /// `F(x2) (N, D)` without keeping anything (`keep = false`) or keeping the norm's and the attention's internals
    /// for [`ReversibleLayer::attention_backward`], with its dropout factors.
    fn attention_forward(&mut self, x2: &[f32], ctx: &PassContext, keep: bool) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let n = ctx.rows();
        let h = if keep {
            self.norm_attn.forward(x2, n)?
        } else {
            let mut h = vec![0.0f32; x2.len()]; // (N, D)
            self.norm_attn.apply(x2, n, &mut h)?;
            h
        };
        let hash_seed = self.hash_seed(ctx);
        let mut a = self.attn.forward(&h, ctx.b, ctx.t, ctx.lengths, hash_seed, ctx.n_hashes_override, keep)?; // (N, D)
        let mask = ctx.mask(self.index, DROPOUT_ATTN, 0, a.len());
        apply_mask(&mut a, mask.as_deref());
        Ok((a, mask))
    }

    /// Backward of `F` from `dy (N, D)` for the last keeping [`ReversibleLayer::attention_forward`] → `dx2`.
    fn attention_backward(&mut self, dy: &[f32], mask: Option<&[f32]>) -> Result<Vec<f32>> {
        let mut da = dy.to_vec(); // (N, D)
        apply_mask(&mut da, mask);
        let dh = self.attn.backward(&da)?; // (N, D)
        self.norm_attn.backward(&dh)
    }

    /// Adds `G(y1)` to `x2` in place, chunk by chunk, keeping nothing.
    fn feed_forward_add(&self, y1: &[f32], x2: &mut [f32], ctx: &PassContext) -> Result<()> {
        let (n, d, d_ff) = (ctx.rows(), self.norm_ff.dim(), self.d_ff());
        let chunk = ctx.chunk_rows.min(n).max(1);
        let mut h = vec![0.0f32; chunk * d]; // (chunk, D) normalised rows
        let mut pre = vec![0.0f32; chunk * d_ff]; // (chunk, d_ff) pre-activation
        let mut g = vec![0.0f32; chunk * d_ff]; // (chunk, d_ff) activation
        let mut f = vec![0.0f32; chunk * d]; // (chunk, D) output
        for start in (0..n).step_by(chunk) {
            let rows = chunk.min(n - start);
            let (h, pre, g, f) = (&mut h[..rows * d], &mut pre[..rows * d_ff], &mut g[..rows * d_ff], &mut f[..rows * d]);
            self.norm_ff.apply(&y1[start * d..(start + rows) * d], rows, h)?;
            self.w1.apply(h, rows, pre)?;
            gelu_erf_forward(pre, g);
            apply_mask(g, ctx.mask(self.index, DROPOUT_FF, start * d_ff, rows * d_ff).as_deref());
            self.w2.apply(g, rows, f)?;
            x2[start * d..(start + rows) * d].iter_mut().zip(f.iter()).for_each(|(s, &v)| *s += v);
        }
        Ok(())
    }

    /// Inference or reversible training forward, in place: `(x1, x2)` → `(y1, y2)`, keeping nothing.
    fn forward_unsaved(&mut self, x1: &mut [f32], x2: &mut [f32], ctx: &PassContext) -> Result<()> {
        self.plain = None;
        let (a, _) = self.attention_forward(x2, ctx, false)?;
        x1.iter_mut().zip(&a).for_each(|(s, &v)| *s += v);
        drop(a);
        self.feed_forward_add(x1, x2, ctx)
    }

    /// Plain training forward, in place, keeping every activation its backward needs; `G` unchunked.
    fn forward_plain(&mut self, x1: &mut [f32], x2: &mut [f32], ctx: &PassContext) -> Result<()> {
        let n = ctx.rows();
        let (a, attn_mask) = self.attention_forward(x2, ctx, true)?;
        x1.iter_mut().zip(&a).for_each(|(s, &v)| *s += v);
        drop(a);
        let h = self.norm_ff.forward(x1, n)?; // (N, D)
        let ff_pre = self.w1.forward(&h, n)?; // (N, d_ff)
        drop(h);
        let mut g = vec![0.0f32; ff_pre.len()]; // (N, d_ff)
        gelu_erf_forward(&ff_pre, &mut g);
        let ff_mask = ctx.mask(self.index, DROPOUT_FF, 0, g.len());
        apply_mask(&mut g, ff_mask.as_deref());
        let f = self.w2.forward(&g, n)?; // (N, D)
        x2.iter_mut().zip(&f).for_each(|(s, &v)| *s += v);
        self.plain = Some(PlainSaved { attn_mask, ff_pre, ff_mask });
        Ok(())
    }

    /// Plain backward, in place: `(dy1, dy2)` → `(dx1, dx2)`, accumulating parameter gradients.
    fn backward_plain(&mut self, dy1: &mut [f32], dy2: &mut [f32]) -> Result<()> {
        let PlainSaved { attn_mask, ff_pre, ff_mask } =
            self.plain.take().ok_or_else(|| Error::Invalid("reformer layer backward without a plain training forward".into()))?;
        // Y2 = X2 + G(Y1): dY1 += G'(Y1)^T dY2.
        let mut dg = self.w2.backward(dy2)?; // (N, d_ff)
        apply_mask(&mut dg, ff_mask.as_deref());
        let mut dpre = vec![0.0f32; ff_pre.len()]; // (N, d_ff)
        gelu_erf_backward(&ff_pre, &dg, &mut dpre);
        drop((ff_pre, dg));
        let dh = self.w1.backward(&dpre)?; // (N, D)
        drop(dpre);
        let dy1_ff = self.norm_ff.backward(&dh)?; // (N, D)
        dy1.iter_mut().zip(&dy1_ff).for_each(|(s, &v)| *s += v);
        // Y1 = X1 + F(X2): dX1 = dY1, dX2 = dY2 + F'(X2)^T dX1.
        let dx2_attn = self.attention_backward(dy1, attn_mask.as_deref())?; // (N, D)
        dy2.iter_mut().zip(&dx2_attn).for_each(|(s, &v)| *s += v);
        self.release()
    }

    /// Frees what the sub-layers still hold from the last training forward and backward.
    fn release(&mut self) -> Result<()> {
        release_norm(&mut self.norm_attn)?;
        release_norm(&mut self.norm_ff)?;
        release_linear(&mut self.w1)?;
        release_linear(&mut self.w2)?;
        self.attn.release()
    }

    /// Reversible backward, in place: `(y1, y2)` → `(x1, x2)` reconstructed and `(dy1, dy2)` → `(dx1, dx2)`,
    /// accumulating parameter gradients. Everything is recomputed here and released before returning.
    fn backward_reversible(&mut self, y1: &mut [f32], y2: &mut [f32], dy1: &mut [f32], dy2: &mut [f32], ctx: &PassContext) -> Result<()> {
        let (n, d, d_ff) = (ctx.rows(), self.norm_ff.dim(), self.d_ff());
        let chunk = ctx.chunk_rows.min(n).max(1);
        // G, chunk by chunk: recompute with internals, subtract from Y2 (giving X2), back-propagate dY2 into dY1.
        for start in (0..n).step_by(chunk) {
            let rows = chunk.min(n - start);
            let span = start * d..(start + rows) * d;
            let h = self.norm_ff.forward(&y1[span.clone()], rows)?; // (rows, D)
            let pre = self.w1.forward(&h, rows)?; // (rows, d_ff)
            drop(h);
            let mut g = vec![0.0f32; pre.len()]; // (rows, d_ff)
            gelu_erf_forward(&pre, &mut g);
            let mask = ctx.mask(self.index, DROPOUT_FF, start * d_ff, rows * d_ff);
            apply_mask(&mut g, mask.as_deref());
            let f = self.w2.forward(&g, rows)?; // (rows, D)
            drop(g);
            y2[span.clone()].iter_mut().zip(&f).for_each(|(s, &v)| *s -= v);
            drop(f);
            let mut dg = self.w2.backward(&dy2[span.clone()])?; // (rows, d_ff)
            apply_mask(&mut dg, mask.as_deref());
            let mut dpre = vec![0.0f32; pre.len()]; // (rows, d_ff)
            gelu_erf_backward(&pre, &dg, &mut dpre);
            drop((pre, dg, mask));
            let dh = self.w1.backward(&dpre)?; // (rows, D)
            drop(dpre);
            let dy1_ff = self.norm_ff.backward(&dh)?; // (rows, D)
            dy1[span].iter_mut().zip(&dy1_ff).for_each(|(s, &v)| *s += v);
        }
        // F: recompute on the reconstructed X2 (now in y2), subtract from Y1 (giving X1), back-propagate dX1.
        let (a, mask) = self.attention_forward(y2, ctx, true)?; // (N, D)
        y1.iter_mut().zip(&a).for_each(|(s, &v)| *s -= v);
        drop(a);
        let dx2_attn = self.attention_backward(dy1, mask.as_deref())?; // (N, D)
        dy2.iter_mut().zip(&dx2_attn).for_each(|(s, &v)| *s += v);
        self.release()
    }

    /// Bytes the last plain training forward keeps for this layer's backward (0 when it kept nothing).
    fn saved_bytes(&self, b: usize, t: usize) -> usize {
        let Some(saved) = &self.plain else { return 0 };
        let (n, d) = (b * t, self.norm_ff.dim());
        // The two norms' inputs with their row statistics, W1's input (N, D) and W2's input (N, d_ff).
        let sublayer_caches = 2 * (n * d + 2 * n) + n * d + n * self.d_ff();
        let own = saved.ff_pre.len() + saved.attn_mask.as_ref().map_or(0, Vec::len) + saved.ff_mask.as_ref().map_or(0, Vec::len);
        (sublayer_caches + own) * F32_BYTES + self.attn.saved_bytes(b, t)
    }

    fn params(&self) -> Vec<&Param> {
        let mut v = self.norm_attn.params();
        v.extend(self.attn.params());
        v.extend(self.norm_ff.params());
        v.extend(self.w1.params());
        v.extend(self.w2.params());
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.norm_attn.params_mut();
        v.extend(self.attn.params_mut());
        v.extend(self.norm_ff.params_mut());
        v.extend(self.w1.params_mut());
        v.extend(self.w2.params_mut());
        v
    }
}

/// What a training forward keeps for [`Reformer::backward`].
#[derive(Clone, Debug)]
struct ForwardSaved {
    b: usize,
    t: usize,
    lengths: Option<Vec<usize>>,
    step: u64,
    /// Whether the forward applied dropout (the backward's recomputation must do the same).
    dropout: bool,
    /// Reversible mode: the last layer's outputs `(Y1, Y2)`, `(N, D)` each.
    streams: Option<(Vec<f32>, Vec<f32>)>,
}

/// The reversible Reformer stack: `(B, T, D_in)` → `(B, T, D)`.
#[derive(Clone, Debug)]
pub struct Reformer {
    cfg: ReformerConfig,
    /// Seed of the dropout masks and hash seeds.
    seed: u64,
    /// `encoder.weight (D, D_in)`, `encoder.bias` when D_in != D.
    encoder: Option<Linear>,
    /// Learned positions `pos_embedding.weight (max_len, D)`.
    pos_embedding: Option<Param>,
    layers: Vec<ReversibleLayer>,
    /// Final `norm` of the mean of the two streams.
    norm: LayerNorm,
    /// Hash rounds replacing the configured ones (evaluation of LSH attention with more rounds).
    n_hashes_override: Option<usize>,
    /// What the last training forward kept.
    saved: Option<ForwardSaved>,
}

impl Reformer {
    /// A Reformer with exact softmax attention (`nn.MultiheadAttention` parameters under `layers.{i}.attn.`),
    /// parameter names under `prefix`, initialised from `seed` (`nn.Linear` initialisation, LayerNorm 1/0, learned
    /// positions N(0, 0.02)); `seed` also keys the dropout masks and hash seeds.
    pub fn with_prefix(cfg: &ReformerConfig, seed: u64, prefix: &str) -> Result<Reformer> {
        let attention = cfg.softmax_attention();
        Self::with_attention(cfg, seed, prefix, |layer, attn_prefix, rng| {
            Ok(Box::new(MultiHeadAttention::new(attention, attn_prefix, rng, seed, layer)?) as Box<dyn ReversibleAttention>)
        })
    }

    /// The Reformer proper: LSH attention ([`LshSelfAttention`], reformer-pytorch's `toqk`/`tov`/`to_out` under
    /// `layers.{i}.attn.`) in every layer; otherwise as [`Reformer::with_prefix`].
    pub fn with_lsh(cfg: &ReformerConfig, seed: u64, prefix: &str) -> Result<Reformer> {
        let attention = cfg.lsh_attention();
        Self::with_attention(cfg, seed, prefix, |_, attn_prefix, rng| {
            Ok(Box::new(LshSelfAttention::new(attention, attn_prefix, rng)?) as Box<dyn ReversibleAttention>)
        })
    }

    /// A Reformer whose layer `i` uses the attention `make_attention(i, "{prefix}layers.{i}.attn.", rng)` returns
    /// (drawing its initial parameters from the shared initialisation stream `rng`).
    pub fn with_attention<F>(cfg: &ReformerConfig, seed: u64, prefix: &str, mut make_attention: F) -> Result<Reformer>
    where
        F: FnMut(usize, &str, &mut Rng) -> Result<Box<dyn ReversibleAttention>>,
    {
        cfg.validate()?;
        let (d, d_ff) = (cfg.d_model, cfg.d_ff);
        let mut rng = rng_for(seed, streams::INIT + 11);
        let encoder = (cfg.input != d).then(|| Linear::new(&format!("{prefix}encoder"), cfg.input, d, true, &mut rng));
        let pos_embedding = (cfg.positional == Positional::Learned).then(|| {
            let mut p = Param::zeros(format!("{prefix}pos_embedding.weight"), &[cfg.max_len, d]);
            fill_normal(&mut rng, &mut p.value, 0.02);
            p
        });
        let mut layers = Vec::with_capacity(cfg.layers);
        for index in 0..cfg.layers {
            let lp = format!("{prefix}layers.{index}.");
            let attn = make_attention(index, &format!("{lp}attn."), &mut rng)?;
            layers.push(ReversibleLayer {
                index,
                norm_attn: LayerNorm::new(&format!("{lp}norm_attn"), d),
                attn,
                norm_ff: LayerNorm::new(&format!("{lp}norm_ff"), d),
                w1: Linear::new(&format!("{lp}ff.w1"), d, d_ff, true, &mut rng),
                w2: Linear::new(&format!("{lp}ff.w2"), d_ff, d, true, &mut rng),
                plain: None,
            });
        }
        let norm = LayerNorm::new(&format!("{prefix}norm"), d);
        Ok(Reformer { cfg: *cfg, seed, encoder, pos_embedding, layers, norm, n_hashes_override: None, saved: None })
    }

    /// The configuration.
    pub fn config(&self) -> &ReformerConfig {
        &self.cfg
    }

    /// Sets (or with `None` clears) the number of hash rounds every LSH attention uses instead of the configured
    /// `n_hashes` (the paper evaluates with more rounds than it trains with); exact attention ignores it.
    pub fn set_n_hashes_override(&mut self, n_hashes: Option<usize>) {
        self.n_hashes_override = n_hashes;
    }

    /// The hash-round override in effect.
    pub fn n_hashes_override(&self) -> Option<usize> {
        self.n_hashes_override
    }

    fn context<'a>(&self, b: usize, t: usize, lengths: Option<&'a [usize]>, step: u64, dropout: bool) -> PassContext<'a> {
        let n = b * t;
        PassContext {
            b,
            t,
            lengths,
            p: if dropout { self.cfg.dropout } else { 0.0 },
            seed: self.seed,
            step,
            n_hashes_override: self.n_hashes_override,
            chunk_rows: n.div_ceil(self.cfg.ff_chunks).max(1),
        }
    }

    /// Encoder and positions: `x (B, T, D_in)` → `(B, T, D)`; a training pass keeps the encoder's input.
    fn embed(&mut self, x: &[f32], b: usize, t: usize, train: bool) -> Result<Vec<f32>> {
        let (d, n) = (self.cfg.d_model, b * t);
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
        Ok(z)
    }

    /// Training forward (`train = true`: dropout on, keeps what [`Reformer::backward`] needs) or inference over
    /// `x (B, T, D_in)` → `(B, T, D)`. `lengths (B)`: valid steps of right-padded sequences. `step` keys the
    /// dropout masks and hash seeds: a training forward and its backward recomputation use those of `step`.
    pub fn run(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>, step: u64, train: bool) -> Result<Vec<f32>> {
        self.run_with_dropout(x, b, t, lengths, step, train, train)
    }

    /// [`Reformer::run`] with dropout chosen separately from `train`: a training forward without dropout (gradient
    /// checks, or a caller that passes no dropout generator) keeps what the backward needs and drops nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with_dropout(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>, step: u64, train: bool, dropout: bool) -> Result<Vec<f32>> {
        self.saved = None;
        let (d, n) = (self.cfg.d_model, b * t);
        check_len("reformer input (B, T, D_in)", &[b, t, self.cfg.input], x.len())?;
        if let Some(l) = lengths {
            check_len("sequence lengths (B)", &[b], l.len())?;
        }
        if let Some(p) = &self.pos_embedding {
            if t > self.cfg.max_len {
                return Err(Error::Invalid(format!("sequence length {t} exceeds the learned positions (model.max_len = {}); {}", self.cfg.max_len, p.name)));
            }
        }
        let mut x2 = self.embed(x, b, t, train)?; // (B, T, D) second stream
        let mut x1 = x2.clone(); // (B, T, D) first stream
        let ctx = self.context(b, t, lengths, step, train && dropout);
        let plain = train && !self.cfg.reversible;
        for layer in &mut self.layers {
            if plain {
                layer.forward_plain(&mut x1, &mut x2, &ctx)?;
            } else {
                layer.forward_unsaved(&mut x1, &mut x2, &ctx)?;
            }
        }
        let mut mean = vec![0.0f32; n * d]; // (B, T, D) mean of the two streams
        mean.iter_mut().zip(x1.iter().zip(&x2)).for_each(|(m, (&a, &c))| *m = 0.5 * (a + c));
        let y = if train {
            self.norm.forward(&mean, n)?
        } else {
            let mut y = vec![0.0f32; n * d]; // (B, T, D)
            self.norm.apply(&mean, n, &mut y)?;
            y
        };
        if train {
            let streams = self.cfg.reversible.then_some((x1, x2));
            self.saved = Some(ForwardSaved { b, t, lengths: lengths.map(<[usize]>::to_vec), step, dropout, streams });
        }
        Ok(y)
    }

    /// Backward from `dy (B, T, D)` → `dx (B, T, D_in)` for the last training forward, accumulating parameter
    /// gradients. In reversible mode the layer inputs are reconstructed from the kept outputs, layer by layer.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let saved = self.saved.take().ok_or_else(|| Error::Invalid("reformer backward called without a training forward".into()))?;
        let (b, t, d) = (saved.b, saved.t, self.cfg.d_model);
        check_len("reformer output gradient (B, T, D)", &[b, t, d], dy.len())?;
        let mut dy1 = self.norm.backward(dy)?; // (B, T, D) gradient of the mean, then of the first stream
        release_norm(&mut self.norm)?;
        dy1.iter_mut().for_each(|g| *g *= 0.5);
        let mut dy2 = dy1.clone(); // (B, T, D) gradient of the second stream
        let ctx = self.context(b, t, saved.lengths.as_deref(), saved.step, saved.dropout);
        match saved.streams {
            Some((mut y1, mut y2)) => {
                for layer in self.layers.iter_mut().rev() {
                    layer.backward_reversible(&mut y1, &mut y2, &mut dy1, &mut dy2, &ctx)?;
                }
            }
            None => {
                for layer in self.layers.iter_mut().rev() {
                    layer.backward_plain(&mut dy1, &mut dy2)?;
                }
            }
        }
        // Both streams start as the embedding.
        let mut dz = dy1; // (B, T, D)
        dz.iter_mut().zip(&dy2).for_each(|(s, &g)| *s += g);
        drop(dy2);
        if let Some(p) = &mut self.pos_embedding {
            for (row, i) in dz.chunks_exact(d).zip(0..) {
                let pos = i % t;
                p.grad[pos * d..(pos + 1) * d].iter_mut().zip(row).for_each(|(g, &v)| *g += v);
            }
        }
        match &mut self.encoder {
            Some(enc) => {
                let dx = enc.backward(&dz)?;
                release_linear(enc)?;
                Ok(dx)
            }
            None => Ok(dz),
        }
    }

    /// Bytes of the buffers the last training forward keeps alive for [`Reformer::backward`] (0 when none is
    /// pending): the kept streams, every sub-layer's saved inputs, statistics, masks and attention internals, the
    /// final norm's input and the encoder's input. Reversible mode keeps no per-layer buffer, so this does not grow
    /// with the number of layers; plain mode keeps every layer's.
    pub fn saved_activation_bytes(&self) -> usize {
        let Some(saved) = &self.saved else { return 0 };
        let (b, t, d) = (saved.b, saved.t, self.cfg.d_model);
        let n = b * t;
        let streams = saved.streams.as_ref().map_or(0, |(y1, y2)| y1.len() + y2.len());
        let final_norm = n * d + 2 * n;
        let encoder = if self.encoder.is_some() { n * self.cfg.input } else { 0 };
        let lengths = saved.lengths.as_ref().map_or(0, |l| l.len() * std::mem::size_of::<usize>());
        let layers: usize = self.layers.iter().map(|l| l.saved_bytes(b, t)).sum();
        (streams + final_norm + encoder) * F32_BYTES + lengths + layers
    }
}

impl Module for Reformer {
    fn params(&self) -> Vec<&Param> {
        let mut v: Vec<&Param> = Vec::new();
        if let Some(e) = &self.encoder {
            v.extend(e.params());
        }
        v.extend(self.pos_embedding.iter());
        for l in &self.layers {
            v.extend(l.params());
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
        for l in &mut self.layers {
            v.extend(l.params_mut());
        }
        v.extend(self.norm.params_mut());
        v
    }

    fn buffers(&self) -> Vec<&Param> {
        self.layers.iter().flat_map(|l| l.attn.buffers()).collect()
    }

    fn buffers_mut(&mut self) -> Vec<&mut Param> {
        self.layers.iter_mut().flat_map(|l| l.attn.buffers_mut()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_module_grads, check_param_grads, projection_loss, projection_weights, GradCheckOpts};
    use crate::rng::fill_uniform;

    fn config(layers: usize, reversible: bool, dropout: f32, ff_chunks: usize) -> ReformerConfig {
        ReformerConfig {
            input: 3,
            d_model: 8,
            layers,
            heads: 2,
            d_ff: 12,
            dropout,
            causal: true,
            positional: Positional::Learned,
            max_len: 16,
            bucket_size: 4,
            n_hashes: 1,
            ff_chunks,
            reversible,
        }
    }

    /// A model whose norms and biases are moved off their 1/0 initialisation, so that every gradient is exercised.
    fn model(cfg: &ReformerConfig, seed: u64) -> Reformer {
        let mut m = Reformer::with_prefix(cfg, seed, "").unwrap();
        let mut r = rng_for(seed, 99);
        for p in m.params_mut() {
            let mut noise = vec![0.0f32; p.numel()];
            fill_uniform(&mut r, &mut noise, if p.name.contains("norm") || p.name.ends_with("bias") { 0.3 } else { 0.05 });
            p.value.iter_mut().zip(&noise).for_each(|(v, &e)| *v += e);
        }
        m
    }

    fn input(n: usize, seed: u64) -> Vec<f32> {
        let mut x = vec![0.0f32; n];
        fill_uniform(&mut rng_for(seed, 5), &mut x, 1.0);
        x
    }

    fn max_abs(v: &[f32]) -> f32 {
        v.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
    }

    /// Largest difference between `a` and `b` relative to the larger of `max |a|` and 1.
    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let diff = a.iter().zip(b).fold(0.0f32, |m, (&x, &y)| m.max((x - y).abs()));
        diff / max_abs(a).max(1.0)
    }

    /// Output, input gradient and every parameter gradient of one training step.
    fn train_pass(m: &mut Reformer, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>, step: u64) -> (Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
        m.zero_grad();
        let y = m.run(x, b, t, lengths, step, true).unwrap();
        let r = projection_weights(y.len(), 77);
        let dx = m.backward(&r).unwrap();
        (y, dx, m.params().iter().map(|p| p.grad.clone()).collect())
    }

    #[test]
    fn parameter_names_follow_reformer_pytorch() {
        let m = Reformer::with_prefix(&config(2, true, 0.0, 1), 0, "reformer.").unwrap();
        let names: Vec<&str> = m.params().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(&names[..2], &["reformer.encoder.weight", "reformer.encoder.bias"]);
        assert_eq!(names[2], "reformer.pos_embedding.weight");
        let layer1: Vec<&str> = names.iter().copied().filter(|n| n.starts_with("reformer.layers.1.")).collect();
        assert_eq!(
            layer1,
            [
                "norm_attn.weight",
                "norm_attn.bias",
                "attn.in_proj_weight",
                "attn.in_proj_bias",
                "attn.out_proj.weight",
                "attn.out_proj.bias",
                "norm_ff.weight",
                "norm_ff.bias",
                "ff.w1.weight",
                "ff.w1.bias",
                "ff.w2.weight",
                "ff.w2.bias"
            ]
            .map(|s| format!("reformer.layers.1.{s}"))
        );
        assert_eq!(&names[names.len() - 2..], &["reformer.norm.weight", "reformer.norm.bias"]);
        let w1 = m.params().into_iter().find(|p| p.name.ends_with("ff.w1.weight")).unwrap();
        assert_eq!(w1.shape, vec![12, 8]);
    }

    #[test]
    fn bad_configs_and_inputs_are_errors() {
        assert!(Reformer::with_prefix(&config(0, true, 0.0, 1), 0, "").is_err());
        assert!(Reformer::with_prefix(&config(2, true, 0.0, 0), 0, "").is_err());
        assert!(Reformer::with_prefix(&config(2, true, 1.0, 1), 0, "").is_err());
        assert!(Reformer::with_prefix(&ReformerConfig { heads: 3, ..config(2, true, 0.0, 1) }, 0, "").is_err());
        let mut m = Reformer::with_prefix(&config(2, true, 0.0, 1), 0, "").unwrap();
        assert!(matches!(m.backward(&[0.0; 8]), Err(Error::Invalid(_))));
        assert!(m.run(&[0.0; 7], 1, 2, None, 0, true).is_err());
        assert!(m.run(&vec![0.0; 17 * 3], 1, 17, None, 0, true).is_err(), "longer than the learned positions");
        m.run(&[0.0; 6], 1, 2, None, 0, true).unwrap();
        assert!(m.backward(&[0.0; 15]).is_err());
    }

    /// The mask of a slice equals the slice of the whole mask, and about `p` of the elements are dropped.
    #[test]
    fn dropout_factors_are_seekable_and_drop_about_p() {
        let whole = dropout_factors(3, sublayer_stream(4, 1, DROPOUT_FF), 0, 10_000, 0.3);
        let part = dropout_factors(3, sublayer_stream(4, 1, DROPOUT_FF), 1234, 777, 0.3);
        assert_eq!(&whole[1234..1234 + 777], &part[..]);
        let dropped = whole.iter().filter(|&&f| f == 0.0).count() as f64 / whole.len() as f64;
        assert!((dropped - 0.3).abs() < 0.02, "dropped {dropped}");
        assert!(whole.iter().all(|&f| f == 0.0 || (f - 1.0 / 0.7).abs() < 1e-6));
        let other = dropout_factors(3, sublayer_stream(4, 2, DROPOUT_FF), 0, 10_000, 0.3);
        assert_ne!(whole, other, "another layer draws another mask");
        assert_ne!(sublayer_stream(4, 1, DROPOUT_FF), sublayer_stream(5, 1, DROPOUT_FF));
        assert_ne!(sublayer_stream(4, 1, DROPOUT_FF), sublayer_stream(4, 1, DROPOUT_ATTN));
    }

    /// Test 1: the reversible backward (reconstructed inputs, recomputed sub-layers, regenerated dropout masks)
    /// gives the gradients of the plain backward (stored activations) to f32 rounding: every parameter and dx.
    #[test]
    fn reversible_gradients_equal_stored_activation_gradients() {
        let (b, t) = (2, 7);
        let cases: [(usize, bool, Option<&[usize]>); 3] = [(2, true, None), (3, true, None), (3, false, Some(&[7, 4]))];
        for (layers, causal, lengths) in cases {
            let plain_cfg = ReformerConfig { causal, ..config(layers, false, 0.25, 1) };
            let rev_cfg = ReformerConfig { reversible: true, ff_chunks: 3, ..plain_cfg };
            let x = input(b * t * 3, 11);
            let (y_p, dx_p, g_p) = train_pass(&mut model(&plain_cfg, 21), &x, b, t, lengths, 5);
            let (y_r, dx_r, g_r) = train_pass(&mut model(&rev_cfg, 21), &x, b, t, lengths, 5);
            assert!(rel_diff(&y_p, &y_r) < 1e-6, "outputs differ by {}", rel_diff(&y_p, &y_r));
            let worst = g_p.iter().zip(&g_r).map(|(a, c)| rel_diff(a, c)).fold(rel_diff(&dx_p, &dx_r), f32::max);
            eprintln!("{layers} layers: output {:e}, worst gradient {worst:e} (reversible vs stored)", rel_diff(&y_p, &y_r));
            assert!(rel_diff(&dx_p, &dx_r) < 5e-6, "{layers} layers: dx differs by {}", rel_diff(&dx_p, &dx_r));
            let names: Vec<String> = model(&rev_cfg, 21).params().iter().map(|p| p.name.clone()).collect();
            for ((name, gp), gr) in names.iter().zip(&g_p).zip(&g_r) {
                assert!(max_abs(gp) > 0.0, "{name}: zero gradient");
                assert!(rel_diff(gp, gr) < 5e-6, "{layers} layers: {name} differs by {}", rel_diff(gp, gr));
            }
            // Control: other dropout masks (step 6) give gradients far from these, so the comparison can fail.
            let (_, dx_other, _) = train_pass(&mut model(&rev_cfg, 21), &x, b, t, lengths, 6);
            assert!(rel_diff(&dx_p, &dx_other) > 1e-2, "the masks of step 5 and 6 should differ");
        }
    }

    /// Test 1 with LSH attention (two hash rounds over three chunks, causal and padded bidirectional): the
    /// reversible backward, which re-hashes every layer from its recorded seed, equals the stored-activation one.
    #[test]
    fn lsh_reversible_gradients_equal_stored_activation_gradients_and_finite_differences() {
        let (b, t) = (2, 12);
        let lsh_model = |cfg: &ReformerConfig, seed: u64| {
            let mut m = Reformer::with_lsh(cfg, seed, "").unwrap();
            let mut r = rng_for(seed, 99);
            for p in m.params_mut() {
                let mut noise = vec![0.0f32; p.numel()];
                fill_uniform(&mut r, &mut noise, if p.name.contains("norm") || p.name.ends_with("bias") { 0.3 } else { 0.05 });
                p.value.iter_mut().zip(&noise).for_each(|(v, &e)| *v += e);
            }
            m
        };
        let cases: [(bool, Option<&[usize]>); 2] = [(true, None), (false, Some(&[12, 7]))];
        for (causal, lengths) in cases {
            let plain_cfg = ReformerConfig { causal, n_hashes: 2, ..config(3, false, 0.25, 1) };
            let rev_cfg = ReformerConfig { reversible: true, ff_chunks: 3, ..plain_cfg };
            let x = input(b * t * 3, 12);
            let (y_p, dx_p, g_p) = train_pass(&mut lsh_model(&plain_cfg, 22), &x, b, t, lengths, 5);
            let (y_r, dx_r, g_r) = train_pass(&mut lsh_model(&rev_cfg, 22), &x, b, t, lengths, 5);
            assert!(rel_diff(&y_p, &y_r) < 1e-6, "outputs differ by {}", rel_diff(&y_p, &y_r));
            assert!(rel_diff(&dx_p, &dx_r) < 5e-6, "dx differs by {}", rel_diff(&dx_p, &dx_r));
            let names: Vec<String> = lsh_model(&rev_cfg, 22).params().iter().map(|p| p.name.clone()).collect();
            assert!(names.iter().any(|n| n.ends_with("attn.toqk.weight")), "LSH attention parameters: {names:?}");
            for ((name, gp), gr) in names.iter().zip(&g_p).zip(&g_r) {
                assert!(max_abs(gp) > 0.0, "{name}: zero gradient");
                assert!(rel_diff(gp, gr) < 5e-6, "{name} differs by {}", rel_diff(gp, gr));
            }
        }
        // Finite differences through the hashed stack without dropout (a small step moves no position to another
        // bucket here; the kernel's own test asserts that property for the layer).
        let cfg = ReformerConfig { n_hashes: 2, ..config(2, true, 0.0, 2) };
        let mut m = lsh_model(&cfg, 41);
        let x = input(b * t * 3, 42);
        let r = projection_weights(b * t * cfg.d_model, 43);
        m.zero_grad();
        m.run(&x, b, t, None, 3, true).unwrap();
        m.backward(&r).unwrap();
        let opts = GradCheckOpts { atol: 2e-3, ..GradCheckOpts::default() };
        let reports = check_module_grads(&mut m, |m: &mut Reformer| projection_loss(&m.run(&x, b, t, None, 3, true).unwrap(), &r), &opts).unwrap();
        assert_eq!(reports.len(), m.params().len());
    }

    /// Test 2: finite differences of the whole stack (encoder, learned positions, two reversible layers with
    /// dropout, final norm) against the reversible backward, for every parameter and the input.
    #[test]
    fn reversible_backward_matches_finite_differences() {
        // The final LayerNorm and two stream sums make the f32 loss noisier than a single layer's: the noise of a
        // central difference reaches about 1e-3 on near-zero coordinates, so the absolute tolerance is doubled
        // (the relative tolerance, which catches a scaled gradient, is the default 1e-2).
        let opts = GradCheckOpts { atol: 2e-3, ..GradCheckOpts::default() };
        for (reversible, lengths) in [(true, None), (false, None), (true, Some(vec![5usize, 3]))] {
            let cfg = ReformerConfig { causal: lengths.is_none(), ..config(2, reversible, 0.2, 2) };
            let (b, t) = (2, 5);
            let mut m = model(&cfg, 31);
            let mut x = input(b * t * 3, 32);
            let r = projection_weights(b * t * cfg.d_model, 33);
            let lengths = lengths.as_deref();
            m.zero_grad();
            m.run(&x, b, t, lengths, 9, true).unwrap();
            let dx = m.backward(&r).unwrap();
            let mut probe = m.clone();
            check_param_grads("x", &mut x, &dx, |xs| projection_loss(&probe.run(xs, b, t, lengths, 9, true).unwrap(), &r), &opts)
                .unwrap_or_else(|e| panic!("reversible {reversible}: {e}"));
            let reports = check_module_grads(&mut m, |m: &mut Reformer| projection_loss(&m.run(&x, b, t, lengths, 9, true).unwrap(), &r), &opts)
                .unwrap_or_else(|e| panic!("reversible {reversible}: {e}"));
            assert_eq!(reports.len(), m.params().len());
            let worst = reports.iter().map(|r| r.worst_ratio).fold(0.0f64, f64::max);
            eprintln!("reversible {reversible}, lengths {lengths:?}: worst error/tolerance {worst:.3} over {} tensors", reports.len());
        }
    }

    /// Test 3: the chunked feed-forward (forward and recomputing backward) equals the unchunked one, with dropout.
    #[test]
    fn chunked_feed_forward_equals_unchunked() {
        let (b, t) = (2, 6);
        let x = input(b * t * 3, 41);
        let reference = |chunks| {
            let cfg = config(2, true, 0.3, chunks);
            let mut m = model(&cfg, 42);
            let eval = m.run(&x, b, t, None, 3, false).unwrap();
            let (y, dx, grads) = train_pass(&mut m, &x, b, t, None, 3);
            (eval, y, dx, grads)
        };
        let (eval1, y1, dx1, g1) = reference(1);
        for chunks in [3, t, b * t, 1000] {
            let (eval, y, dx, g) = reference(chunks);
            let worst = g.iter().zip(&g1).map(|(a, c)| rel_diff(c, a)).fold(rel_diff(&dx1, &dx), f32::max);
            eprintln!("{chunks} chunks: output {:e}, worst gradient {worst:e} (relative to 1 chunk)", rel_diff(&y1, &y));
            assert!(rel_diff(&eval1, &eval) < 1e-6, "{chunks} chunks: evaluation differs");
            assert!(rel_diff(&y1, &y) < 1e-6, "{chunks} chunks: training output differs");
            assert!(rel_diff(&dx1, &dx) < 1e-6, "{chunks} chunks: dx differs by {}", rel_diff(&dx1, &dx));
            for (a, c) in g1.iter().zip(&g) {
                assert!(rel_diff(a, c) < 1e-6, "{chunks} chunks: a gradient differs by {}", rel_diff(a, c));
            }
        }
    }

    /// Test 4: after a training forward the reversible stack keeps the same bytes for 2 and 6 layers, the plain
    /// stack keeps more for every layer; after the backward nothing is kept.
    #[test]
    fn saved_activations_do_not_grow_with_depth_in_reversible_mode() {
        let (b, t) = (2, 16);
        let x = input(b * t * 3, 51);
        let saved = |layers, reversible| {
            let mut m = model(&config(layers, reversible, 0.1, 4), 52);
            let y = m.run(&x, b, t, None, 0, true).unwrap();
            let bytes = m.saved_activation_bytes();
            m.backward(&y).unwrap();
            assert_eq!(m.saved_activation_bytes(), 0);
            bytes
        };
        let (rev2, rev6, plain2, plain6) = (saved(2, true), saved(6, true), saved(2, false), saved(6, false));
        let (n, d) = (b * t, 8);
        // The two streams, the final norm's input with its statistics and the encoder's input.
        assert_eq!(rev2, (2 * n * d + n * d + 2 * n + n * 3) * 4);
        assert_eq!(rev2, rev6);
        assert!(plain2 > rev2);
        let per_layer = (plain6 - plain2) / 4;
        assert_eq!(plain6 - plain2, 4 * per_layer);
        assert!(per_layer > 10 * n * d, "a plain layer keeps its norms, attention and feed-forward activations: {per_layer} bytes");
        // Evaluation keeps nothing.
        let mut m = model(&config(2, false, 0.1, 4), 52);
        m.run(&x, b, t, None, 0, false).unwrap();
        assert_eq!(m.saved_activation_bytes(), 0);
    }

    #[test]
    fn evaluation_equals_training_without_dropout_and_backward_accumulates() {
        let (b, t) = (2, 5);
        let x = input(b * t * 3, 61);
        for reversible in [true, false] {
            let mut m = model(&config(2, reversible, 0.0, 2), 62);
            let eval = m.run(&x, b, t, None, 0, false).unwrap();
            let train = m.run(&x, b, t, None, 0, true).unwrap();
            assert!(rel_diff(&eval, &train) < 1e-6);
            let r = projection_weights(train.len(), 63);
            m.zero_grad();
            m.run(&x, b, t, None, 0, true).unwrap();
            let dx1 = m.backward(&r).unwrap();
            let once: Vec<Vec<f32>> = m.params().iter().map(|p| p.grad.clone()).collect();
            m.run(&x, b, t, None, 0, true).unwrap();
            let dx2 = m.backward(&r).unwrap();
            assert_eq!(dx1, dx2);
            for (p, g) in m.params().iter().zip(&once) {
                assert!(p.grad.iter().zip(g).all(|(a, &g1)| (a - 2.0 * g1).abs() <= 1e-5 * g1.abs().max(1.0)), "{} does not accumulate", p.name);
            }
        }
    }

    /// Exact attention that records the hash seed and `train` flag of every call.
    #[derive(Clone, Debug)]
    struct RecordingAttention {
        inner: MultiHeadAttention,
        calls: std::sync::Arc<std::sync::Mutex<Vec<(usize, u64, bool)>>>,
        layer: usize,
    }

    impl Module for RecordingAttention {
        fn params(&self) -> Vec<&Param> {
            self.inner.params()
        }
        fn params_mut(&mut self) -> Vec<&mut Param> {
            self.inner.params_mut()
        }
    }

    impl ReversibleAttention for RecordingAttention {
        fn forward(
            &mut self,
            x: &[f32],
            b: usize,
            t: usize,
            lengths: Option<&[usize]>,
            hash_seed: u64,
            n_hashes: Option<usize>,
            train: bool,
        ) -> Result<Vec<f32>> {
            self.calls.lock().unwrap().push((self.layer, hash_seed, train));
            ReversibleAttention::forward(&mut self.inner, x, b, t, lengths, hash_seed, n_hashes, train)
        }
        fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
            ReversibleAttention::backward(&mut self.inner, dy)
        }
        fn release(&mut self) -> Result<()> {
            self.inner.release()
        }
        fn saved_bytes(&self, b: usize, t: usize) -> usize {
            self.inner.saved_bytes(b, t)
        }
        fn clone_box(&self) -> Box<dyn ReversibleAttention> {
            Box::new(self.clone())
        }
    }

    /// Each layer gets its own hash seed, a function of (seed, step, layer), and the backward's recomputation of a
    /// layer passes the seed of its forward.
    #[test]
    fn hash_seeds_are_per_layer_and_step_and_replayed_in_the_backward() {
        let cfg = config(3, true, 0.0, 1);
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = calls.clone();
        let attention = cfg.softmax_attention();
        let mut m = Reformer::with_attention(&cfg, 7, "", |layer, prefix, rng| {
            let inner = MultiHeadAttention::new(attention, prefix, rng, 7, layer)?;
            Ok(Box::new(RecordingAttention { inner, calls: log.clone(), layer }) as Box<dyn ReversibleAttention>)
        })
        .unwrap();
        let (b, t) = (1, 4);
        let x = input(b * t * 3, 71);
        let y = m.run(&x, b, t, None, 12, true).unwrap();
        m.backward(&y).unwrap();
        let seen = calls.lock().unwrap().clone();
        let forward: Vec<(usize, u64, bool)> = (0..3).map(|l| (l, layer_hash_seed(7, 12, l), false)).collect();
        let recompute: Vec<(usize, u64, bool)> = (0..3).rev().map(|l| (l, layer_hash_seed(7, 12, l), true)).collect();
        assert_eq!(seen, [forward, recompute].concat());
        assert_ne!(layer_hash_seed(7, 12, 0), layer_hash_seed(7, 12, 1));
        assert_ne!(layer_hash_seed(7, 12, 0), layer_hash_seed(7, 13, 0));
        assert_ne!(layer_hash_seed(7, 12, 0), layer_hash_seed(8, 12, 0));
    }
}
