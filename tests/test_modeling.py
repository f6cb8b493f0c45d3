"""MMARForConditionalGeneration on real digits: losses, gradient flow, overfitting, backbones, checkpointing, bf16."""

import pytest
import torch
from conftest import TINY_LLAMA, TINY_VAE, digits_to_pixel_values, generation_batch, tiny_config
from torch import nn

from modeling_mmar import MMARForConditionalGeneration, MMARScheduler
from modeling_mmar.diffusion_head_mmar import MMARDiffusionHead

CAPTION_IDS = list(range(20, 30))  # one caption token per digit class, inside the tiny vocabulary


def captioned_batch(config, images, labels):
    """`<bos> caption <boi> <img>*L <eoi> <eos>` rows whose caption token names the digit; CE on all but <bos>/<img>."""
    text = config.text_config
    rows = [
        [text.bos_token_id, CAPTION_IDS[label], config.boi_token_id]
        + [config.image_token_id] * config.tokens_per_image
        + [config.eoi_token_id, text.eos_token_id]
        for label in labels.tolist()
    ]
    input_ids = torch.tensor(rows)
    labels_ = input_ids.clone()
    labels_[input_ids == config.image_token_id] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels_,
            "pixel_values": digits_to_pixel_values(images)}


def random_image_mask(num_images, tokens_per_image, ratio=0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_images, tokens_per_image, generator=generator) < ratio


def nonzero_grad(parameter) -> bool:
    return parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)


def test_forward_backward_reaches_every_trainable_part_and_never_the_vae(digits):
    torch.manual_seed(0)
    config = tiny_config(vae_config=dict(TINY_VAE), patch_size=1)  # 8x8 -> 4x4 latents, 16 tokens of dim 4
    model = MMARForConditionalGeneration(config).train()
    images, labels = digits
    batch = captioned_batch(config, images[:4], labels[:4])
    image_mask = random_image_mask(4, config.tokens_per_image)

    out = model(**batch, image_mask=image_mask)
    assert torch.isfinite(out.loss) and out.text_loss is not None and out.image_loss is not None
    torch.testing.assert_close(out.loss, out.text_loss + config.image_loss_weight * out.image_loss)
    out.loss.backward()

    for name, parameter in model.model.language_model.named_parameters():
        if name != "embed_tokens.weight":  # (the embedding gets grad in the rows of the tokens used)
            assert nonzero_grad(parameter), f"no gradient in backbone parameter {name}"
    assert nonzero_grad(model.model.language_model.embed_tokens.weight)
    for name, parameter in model.model.image_embedder.named_parameters():
        assert nonzero_grad(parameter), f"no gradient in image embedder parameter {name}"  # incl. mask_embedding
    assert nonzero_grad(model.lm_head.weight)
    # The head's output layer starts at zero, so at step 0 only that layer (and its bias) learns.
    assert nonzero_grad(model.diffusion_head.final_layer.linear.weight)
    for parameter in model.model.vae.parameters():
        assert not parameter.requires_grad and parameter.grad is None
    assert not model.model.vae.training

    # Each step opens one more zero-initialised level (output layer -> adaLN gates -> the blocks' MLPs and the
    # timestep/condition embeddings): after a few steps every head weight learns.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.step()
        optimizer.zero_grad()
        model(**batch, image_mask=image_mask).loss.backward()
    for name, parameter in model.diffusion_head.named_parameters():
        assert nonzero_grad(parameter), f"no gradient in diffusion head parameter {name} after 3 steps"
    assert all(p.grad is None for p in model.model.vae.parameters())


def test_overfitting_a_fixed_digits_batch_halves_both_losses(digits):
    torch.manual_seed(0)
    config = tiny_config(diffusion_batch_mul=4)  # the paper's 4 draws per token: a less noisy diffusion gradient
    model = MMARForConditionalGeneration(config).train()
    images, labels = digits
    batch = captioned_batch(config, images[:8], labels[:8])
    batch["image_mask"] = random_image_mask(8, config.tokens_per_image, ratio=0.6, seed=1)

    def evaluate():
        torch.manual_seed(123)  # the same diffusion timesteps and noise before and after training
        with torch.no_grad():
            out = model(**batch)
        return out.text_loss.item(), out.image_loss.item()

    text_before, image_before = evaluate()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(150):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    text_after, image_after = evaluate()
    assert text_after <= 0.5 * text_before, (text_before, text_after)
    assert image_after <= 0.5 * image_before, (image_before, image_after)


def test_image_loss_is_over_the_masked_tokens_only_conditioned_at_their_own_positions(config, digits):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(config)
    images, labels = digits
    batch = captioned_batch(config, images[:3], labels[:3])
    image_mask = random_image_mask(3, config.tokens_per_image, ratio=0.4)

    seen = {}
    compute_loss = model.diffusion_loss

    def spy(conditions, targets, **kwargs):
        seen["conditions"], seen["targets"] = conditions.detach(), targets.detach()
        return compute_loss(conditions, targets, **kwargs)

    model.diffusion_loss = spy
    head_rows = []
    hook = model.diffusion_head.register_forward_hook(lambda module, args, output: head_rows.append(args[0].shape[0]))
    out = model(**batch, image_mask=image_mask)
    hook.remove()

    num_masked = int(image_mask.sum())
    assert head_rows == [num_masked * config.diffusion_batch_mul]
    clean_tokens = model.model.encode_images(batch["pixel_values"])
    assert torch.equal(seen["targets"], clean_tokens[image_mask])
    with torch.no_grad():  # a training call with grad must come through the model's forward (it owns the loss)
        states = model.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                             image_mask=image_mask).last_hidden_state
    own_positions = states[batch["input_ids"] == config.image_token_id]  # no shift: the token's own position
    torch.testing.assert_close(seen["conditions"], own_positions[image_mask.reshape(-1)])
    assert torch.isfinite(out.image_loss)

    # Nothing masked: no image loss, no head call, no NaN.
    head_rows.clear()
    hook = model.diffusion_head.register_forward_hook(lambda module, args, output: head_rows.append(1))
    out = model(**batch, image_mask=torch.zeros_like(image_mask))
    hook.remove()
    assert out.image_loss is None and head_rows == []
    assert torch.isfinite(out.loss) and torch.equal(out.loss, out.text_loss)


class OracleHead(MMARDiffusionHead):
    """Knows x0 (passed in as the condition) and returns the exact diffusion target for its prediction type."""

    def __init__(self, scheduler, token_dim):
        super().__init__(token_dim, condition_dim=1, width=4, depth=0)
        self.scheduler = scheduler

    def embed_condition(self, condition):
        return condition

    def forward(self, noisy, timesteps, condition=None, *, condition_embedding=None):
        clean = (condition if condition is not None else condition_embedding)[:, : self.token_dim]
        alpha_prod = self.scheduler.alphas_cumprod[timesteps].unsqueeze(-1)
        noise = (noisy - alpha_prod.sqrt() * clean) / (1 - alpha_prod).sqrt()
        kind = self.scheduler.config.prediction_type
        if kind == "v_prediction":
            return alpha_prod.sqrt() * noise - (1 - alpha_prod).sqrt() * clean
        return noise if kind == "epsilon" else clean


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_diffusion_loss_regresses_the_scheduler_target(prediction_type, digits):
    config = tiny_config(prediction_type=prediction_type)
    model = MMARForConditionalGeneration(config)
    tokens = model.model.encode_images(digits_to_pixel_values(digits[0][:5])).reshape(-1, config.token_dim)
    conditions = torch.nn.functional.pad(tokens, (0, config.text_config.hidden_size - config.token_dim))
    torch.manual_seed(0)
    untrained = model.diffusion_loss(conditions, tokens)  # zero-initialised head: the target's second moment
    assert untrained > 0.05
    model.diffusion_head = OracleHead(MMARScheduler(prediction_type=prediction_type), config.token_dim)
    # (epsilon's noise estimate divides by sigma_t, tiny at t = 0: float32 error only)
    assert model.diffusion_loss(conditions, tokens) < 1e-4 * untrained


def test_text_only_image_only_and_mixed_batches(config, digits):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(config)
    text = config.text_config
    images = digits_to_pixel_values(digits[0][:2])
    L = config.tokens_per_image

    text_ids = torch.tensor([[text.bos_token_id, 20, 21, 22, text.eos_token_id]] * 2)
    out = model(input_ids=text_ids, labels=text_ids)
    assert out.image_loss is None and torch.isfinite(out.text_loss) and torch.equal(out.loss, out.text_loss)

    image_ids = torch.tensor([[config.boi_token_id] + [config.image_token_id] * L + [config.eoi_token_id]] * 2)
    mask = random_image_mask(2, L)
    out = model(input_ids=image_ids, pixel_values=images, image_mask=mask)
    assert out.text_loss is None and torch.isfinite(out.image_loss) and torch.equal(out.loss, out.image_loss)
    out.loss.backward()
    assert nonzero_grad(model.diffusion_head.final_layer.linear.weight)

    # Understanding: fully visible image (no image_mask) and an answer: text loss only.
    understanding = torch.cat([image_ids, text_ids], dim=1)
    labels = torch.full_like(understanding, -100)
    labels[:, -2:] = understanding[:, -2:]
    out = model(input_ids=understanding, pixel_values=images, labels=labels)
    assert out.image_loss is None and torch.isfinite(out.text_loss)
    assert out.logits.shape == (2, understanding.shape[1], text.vocab_size)

    mixed = generation_batch(config, images)  # prompt <boi> image <eoi> <eos>, text labels + masked image tokens
    out = model(**mixed, pixel_values=images, image_mask=mask)
    assert torch.isfinite(out.text_loss) and torch.isfinite(out.image_loss)
    torch.testing.assert_close(out.loss, out.text_loss + out.image_loss)
    # The clean tokens come back for callers that need them, and logits_to_keep trims only the logits.
    assert out.image_tokens.shape == (2, L, config.token_dim)
    mixed.pop("labels")
    assert model(**mixed, pixel_values=images, logits_to_keep=1).logits.shape == (2, 1, text.vocab_size)


def test_pixel_patch_tokens_round_trip_exactly(config, digits):
    model = MMARForConditionalGeneration(config)
    pixels = digits_to_pixel_values(digits[0][:3])
    tokens = model.model.encode_images(pixels)
    assert tokens.shape == (3, config.tokens_per_image, config.token_dim)
    assert torch.equal(model.model.decode_image_tokens(tokens), pixels)
    # Token k is patch k in row-major order: the top-left 2x2 pixels are token 0.
    torch.testing.assert_close(tokens[:, 0], pixels[:, 0, :2, :2].reshape(3, 4) * config.vae_scaling_factor)

    scaled = MMARForConditionalGeneration(tiny_config(vae_scaling_factor=0.5, vae_shift_factor=0.25))
    tokens = scaled.model.encode_images(pixels)
    torch.testing.assert_close(tokens[:, 0], (pixels[:, 0, :2, :2].reshape(3, 4) - 0.25) * 0.5)
    torch.testing.assert_close(scaled.model.decode_image_tokens(tokens), pixels)


def test_vae_tokenizer_is_the_scaled_latent_mode(digits):
    torch.manual_seed(0)
    config = tiny_config(vae_config=dict(TINY_VAE), patch_size=2, vae_scaling_factor=0.5)
    model = MMARForConditionalGeneration(config)
    assert (config.latent_size, config.tokens_per_image, config.token_dim) == (4, 4, 16)
    pixels = digits_to_pixel_values(digits[0][:2])
    tokens = model.model.encode_images(pixels)
    latents = model.model.vae.encode(pixels).latent_dist.mode()
    assert tokens.shape == (2, 4, 16)
    torch.testing.assert_close(tokens[:, 0], 0.5 * latents[:, :, :2, :2].reshape(2, 16))
    decoded = model.model.decode_image_tokens(tokens)
    torch.testing.assert_close(decoded, model.model.vae.decode(latents).sample)


@pytest.mark.parametrize("text_config", [None, TINY_LLAMA], ids=["qwen2", "llama"])
def test_any_causal_lm_backbone_with_embedder_blocks(text_config, digits):
    torch.manual_seed(0)
    overrides = {"embedder_depth": 1}
    if text_config is not None:
        overrides["text_config"] = dict(text_config)
    config = tiny_config(**overrides)
    model = MMARForConditionalGeneration(config)
    expected = "LlamaModel" if text_config is not None else "Qwen2Model"
    assert type(model.model.language_model).__name__ == expected
    images, labels = digits
    batch = captioned_batch(config, images[:2], labels[:2])
    out = model(**batch, image_mask=random_image_mask(2, config.tokens_per_image))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(nonzero_grad(p) for p in model.model.image_embedder.blocks.parameters())


def test_activation_checkpointing_gives_the_same_loss_and_gradients(config, digits):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(config).train()
    images, labels = digits
    batch = captioned_batch(config, images[:2], labels[:2])
    batch["image_mask"] = random_image_mask(2, config.tokens_per_image)

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(7)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    layer_calls = []

    class CountingActivation(nn.Module):  # (module hooks do not fire in the backward replay; a forward does)
        def __init__(self, activation):
            super().__init__()
            self.activation = activation

        def forward(self, x):
            layer_calls.append(1)
            return self.activation(x)

    mlp = model.model.language_model.layers[0].mlp
    mlp.act_fn = CountingActivation(mlp.act_fn)
    plain_loss, plain_grads = loss_and_grads()
    assert len(layer_calls) == 1
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    layer_calls.clear()
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    assert len(layer_calls) == 2  # the layer ran again in backward: its activations were not kept
    torch.testing.assert_close(checkpointed_loss, plain_loss)
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(checkpointed_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4)


def test_bf16_forward_backward_is_finite_and_keeps_the_vae_in_fp32(tmp_path, digits):
    torch.manual_seed(0)
    config = tiny_config(vae_config=dict(TINY_VAE), patch_size=1)
    MMARForConditionalGeneration(config).save_pretrained(tmp_path)
    model = MMARForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).train()
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.diffusion_head.final_layer.linear.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.model.vae.parameters())
    images, labels = digits
    batch = captioned_batch(config, images[:2], labels[:2])
    out = model(**batch, image_mask=random_image_mask(2, config.tokens_per_image))
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.text_loss) and torch.isfinite(out.image_loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g.float()).all() for g in grads)


def trained_looking_head(config):
    """A head with random (not zero-initialised) weights, so that every path through it matters."""
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(config)
    with torch.no_grad():
        for parameter in model.diffusion_head.parameters():
            parameter.copy_(0.1 * torch.randn_like(parameter))
    return model


def test_head_embeds_a_shared_timestep_and_a_precomputed_condition_like_per_row_inputs(config):
    head = trained_looking_head(config).diffusion_head
    noisy, condition = torch.randn(6, config.token_dim), torch.randn(6, config.text_config.hidden_size)
    per_row = head(noisy, torch.full((6,), 417), condition)
    shared = head(noisy, torch.tensor([417]), condition_embedding=head.embed_condition(condition))
    torch.testing.assert_close(shared, per_row, atol=1e-5, rtol=1e-4)  # float rounding of other batch shapes
    assert not torch.allclose(per_row, head(noisy, torch.full((6,), 10), condition))  # the timestep matters
    with pytest.raises(ValueError, match="exactly one of `condition` and `condition_embedding`"):
        head(noisy, torch.tensor([1]))


@pytest.mark.parametrize("use_reentrant", [False, True])  # True: what peft's kbit preparation ends up with
def test_head_checkpointing_keeps_the_diffusion_loss_and_its_gradients(config, digits, use_reentrant):
    """`activation_checkpointing_enable()` also checkpoints the head, one diffusion_batch_mul copy at a time."""
    model = trained_looking_head(config).train()
    targets = model.model.encode_images(digits_to_pixel_values(digits[0][:6])).flatten(0, 1)[:40]
    conditions = torch.randn(40, config.text_config.hidden_size, requires_grad=True)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        conditions.grad = None
        torch.manual_seed(3)  # the same timesteps and noise both times
        loss = model.diffusion_loss(conditions, targets)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.diffusion_head.named_parameters()}
        return loss.detach(), grads, conditions.grad.clone()

    loss, grads, condition_grad = loss_and_grads()
    head_calls = []
    model.diffusion_head.input_proj.register_forward_hook(lambda module, args, out: head_calls.append(args[0].shape[0]))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert model.diffusion_head.gradient_checkpointing
    checkpointed_loss, checkpointed_grads, checkpointed_condition_grad = loss_and_grads()
    # one forward per copy, then each copy recomputed once in the backward pass
    assert head_calls == [40] * config.diffusion_batch_mul * 2
    torch.testing.assert_close(checkpointed_loss, loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(checkpointed_condition_grad, condition_grad, atol=1e-6, rtol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_the_diffusion_loss_is_a_function_of_its_inputs_given_a_generator(digits):
    config = tiny_config()
    model = MMARForConditionalGeneration(config)
    tokens = model.model.encode_images(digits_to_pixel_values(digits[0][:3])).reshape(-1, config.token_dim)
    conditions = torch.randn(tokens.shape[0], config.text_config.hidden_size)

    def loss(seed):
        return model.diffusion_loss(conditions, tokens, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(loss(7), loss(7))
    assert not torch.equal(loss(7), loss(8))
