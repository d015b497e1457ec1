"""A tiny Gemini-style model: images, audio, video and text in one decoder (prefix-LM).

    tjax train --config multimodal_tiny --workdir /tmp/mm
    tjax describe --workdir /tmp/mm --image shapes.png "what color is the circle?"
    tjax eval --workdir /tmp/mm --split test      # exact match per task, BLEU, samples.png

Hardware: one CPU (2 cores); under 15 minutes there, data preparation included.
Data: `multimodal_corpus` (24,000 training examples: captions of and questions about
32 x 32 pictures of coloured shapes, 0.75 s clips of beeps and 8-frame clips of a
moving shape, plus text-only sentences; held-out combinations in validation and test).
Model: a 4-layer d-128 Llama-style decoder reading every medium as a bidirectional
prefix: ViT patches (4 x 4) of each image, Whisper log-mel + conv stem tokens of the
audio, 2 x 4 x 4 tubelets of 4 sampled frames; each encoder has two Transformer layers,
and the image and video patch grids reach the decoder average-pooled 2 x 2.
"""

from transformer_jax.tasks.multimodal.config import mm_base


def get_config():
    c = mm_base()
    c.media = "image,audio,video"
    c.data.name = "multimodal_corpus"
    c.data.max_text_length = 24
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.tokenizer.vocab_size = 256
    c.tokenizer.max_train_sentences = 6000  # records read (their words cover the set's)
    c.model.update(d_model=128, num_heads=4, d_ff=384, num_decoder_layers=4, fusion="prefix")
    # Rows hold one medium each here: 64 columns fit the largest (audio: 40 + 24 text).
    c.model.max_tokens = 64
    c.image.update(image_size=32, patch_size=4, pool=2, d_model=128, num_heads=4, d_ff=256)
    c.image.update(num_layers=2, video_mode="tubelets", num_frames=4, tubelet_frames=2)
    c.audio.update(max_samples=12_000, d_model=128, num_heads=4, d_ff=256, num_layers=2)
    c.optimizer.peak_lr = 2e-3
    c.optimizer.warmup_steps = 100
    c.train.num_steps = 900
    c.train.log_every = 50
    c.train.eval_every = 900
    c.train.eval_batches = 0
    c.train.checkpoint_every = 300
    c.train.keep_checkpoints = 3
    c.generate.max_new_tokens = 12
    c.generate.eval_examples = 600
    return c
