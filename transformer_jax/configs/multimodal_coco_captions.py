"""Image captioning on COCO (Karpathy splits): a ViT-B/16 encoder read by a text decoder.

    tjax train --config multimodal_coco_captions --workdir runs/coco --config.data.data_dir=DIR
    tjax eval --workdir runs/coco --split test        # BLEU of greedy captions, samples.png
    tjax describe --workdir runs/coco --image photo.jpg
    # from an ImageNet-21k ViT (a Hugging Face folder with config.json + model.safetensors):
    tjax train --config multimodal_coco_captions --workdir runs/coco-vit \\
        --config.data.data_dir=DIR --config.image.hf_path=vit-base-patch16-224-in21k

Data: tfds `coco_captions` (COCO 2014 with Karpathy and Li's splits: train 82,783
images, restval 30,504, val 5,000, test 5,000; about 5 captions each), prepared
beforehand (`tfds build coco_captions --file_format=array_record`, needs TensorFlow,
network access and about 40 GB) into --config.data.data_dir, read from there as
`coco_captions/2014:1.1.0`. Training reads train+restval (113,287 images, Karpathy's
training set), one random caption of an image each time it is drawn; evaluation
captions val (test: `--split test`) against all its captions. Images are centre-cropped
and resized to 224 x 224 (bicubic), captions lower-cased. Tokenizer: an 8k
SentencePiece BPE trained on the captions of the first 20,000 training images.
Model (prefix-LM, PaliGemma style): ViT-B/16 (12 layers, d 768, 12 heads, d_ff 3072,
[CLS] + 196 patches, learned positions; the shape of google/vit-base-patch16-224-in21k,
so `image.hf_path` can start from it) whose 197 tokens, projected, are the bidirectional
prefix of a 6-layer d-768 Llama-style decoder (12 heads, SwiGLU d_ff 2048, RoPE); the
caption is causal, [bos] caption [eos] in 32 tokens. About 86M + 55M parameters.
Recipe: AdamW (b2 0.98, weight decay 0.05), peak lr 5e-4, 1,000 warmup steps, cosine
decay to 5%, clip 1.0, dropout 0.1, label smoothing 0.1, 256 images a step, 9,000 steps
(about 20 epochs), bfloat16 compute.
Hardware: one A100/H100 80 GB (or 8 of them data parallel). An estimate from FLOPs,
not measured: about 0.17 TFLOP per image and step (ViT-B/16 at 224: 3 x 35 GFLOP;
decoder over 199 + 32 columns: 3 x 20 GFLOP), 2.3M images = 0.38 EFLOP, about 50
minutes at 40% of one A100's bfloat16 peak. JPEG decoding and resizing on the host
(256 images a step) may bound the step time instead: give the host many cores.
Should reach: we report corpus BLEU (sacreBLEU, 13a tokens, all references) of greedy
captions as `image_caption_bleu`. For reference only, not our measurement and not the
same scorer (coco-caption's BLEU-4 on PTB-tokenized text): Show, Attend and Tell (Xu et
al., 2015), a CNN encoder pre-trained on ImageNet with a decoder trained from scratch,
reports BLEU-4 24.3 (soft attention) / 25.0 (hard) on the Karpathy test split; NeuralTalk
(Karpathy and Fei-Fei, 2015) reports 23.0. A ViT trained from scratch on 113k images
is expected to stay well below these; `image.hf_path` (an ImageNet-21k ViT) makes the
setup comparable to theirs.
"""

from transformer_jax.tasks.multimodal.config import mm_base


def get_config():
    c = mm_base()
    c.media = "image"
    # The pinned version reads the prepared files (TFDS builds this builder's code only
    # with TensorFlow installed; reading needs neither it nor the code).
    c.data.name = "coco_captions/2014:1.1.0"
    c.data.format = "coco_captions"
    c.data.train_split = "train+restval"  # Karpathy's training set
    c.data.eval_split = "val"
    c.data.test_split = "test"
    c.data.max_text_length = 32
    c.data.batch_size = 256
    c.data.eval_batch_size = 128
    c.tokenizer.vocab_size = 8000
    c.tokenizer.model_type = "bpe"
    c.tokenizer.max_train_sentences = 20_000  # images (each gives all its captions)
    c.model.update(
        d_model=768,
        num_heads=12,
        d_ff=2048,
        num_decoder_layers=6,
        fusion="prefix",
        max_images=1,
        max_position=512,
        dropout_rate=0.1,
        dtype="bfloat16",
    )
    c.image.update(
        image_size=224,
        patch_size=16,
        positions="learned",
        cls_token=True,
        d_model=768,
        num_heads=12,
        d_ff=3072,
        num_layers=12,
    )
    c.optimizer.update(peak_lr=5e-4, warmup_steps=1000, weight_decay=0.05, b2=0.98)
    c.train.label_smoothing = 0.1
    c.train.num_steps = 9000
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.generate.max_new_tokens = 30
    c.generate.batch_size = 128
    c.generate.eval_examples = 1000  # val images captioned at each evaluation (0 = all)
    return c
