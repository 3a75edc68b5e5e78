"""The contract every registered model implements: :class:`MERModel`.

A model is a ``torch.nn.Module`` that

* declares the views it consumes: :meth:`MERModel.input_spec_for` gives them from the model's
  options without building it (the pipeline, the config check and the API use this); a built
  model carries the same tuple as ``model.input_spec``;
* maps ``forward(views)`` (view name -> batched tensor) to logits ``(B, K)`` or to a dict
  holding at least ``"logits"`` (plus auxiliary outputs);
* computes its training loss with ``loss(output, target)`` (cross-entropy on the logits unless
  the model overrides it);
* names its class-indexed state-dict entries with :meth:`MERModel.classifier_keys` (the
  classifier heads), so that fine-tuning on other classes re-orders or resets exactly those.

A model's options (the ``model:`` section of a config without ``name``) are the keyword
arguments of its constructor. :meth:`MERModel.options` checks them against the constructor's
signature and type hints before anything is built, so a misspelt option or a value of the wrong
type (``image_size: "big"``) is a :class:`~merkit.errors.ConfigError` naming the option.
"""

from __future__ import annotations

import functools
import inspect
import typing
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from torch import nn

from merkit.errors import ConfigError
from merkit.views import ViewSpec

Output = torch.Tensor | dict[str, torch.Tensor]


def logits_of(output: Output) -> torch.Tensor:
    """The ``(B, K)`` logits of a model output (a tensor or a dict with ``"logits"``)."""
    return output["logits"] if isinstance(output, dict) else output


class MERModel(nn.Module, ABC):
    """Base class of every registered model (see the module docstring for the contract).

    Subclasses take ``num_classes`` as their first constructor argument and every option as a
    keyword argument with a default and a type hint, set ``self.input_spec =
    self.input_spec_from({...})`` in ``__init__`` and implement :meth:`input_spec_from`,
    ``forward`` and :meth:`classifier_keys`.

    Attributes:
        input_spec: the views this model consumes, a tuple of :class:`~merkit.views.ViewSpec`.
        registry_name: the name the model is registered under (set by
            :func:`merkit.models.registry.register`).
    """

    input_spec: tuple[ViewSpec, ...]
    registry_name: str = ""

    @classmethod
    def options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Validated constructor options with the defaults filled in.

        Args:
            options: keyword options as written in a config (without ``name``).

        Returns:
            dict option -> value, every constructor option present; values are converted to
            their hinted type where pydantic's lax mode does so (``"3"`` -> 3 for an ``int``).

        Raises:
            ConfigError: an option the constructor does not take, or a value its type hint
                refuses (the message names the model and the option).
        """
        schema = _options_schema(cls)
        try:
            validated = schema.model_validate(options)
        except ValidationError as err:
            raise ConfigError(f"model {cls.registry_name or cls.__name__!r}: {_describe(err, schema, options)}") from None
        return {name: getattr(validated, name) for name in schema.model_fields}

    @classmethod
    def input_spec_for(cls, **options: Any) -> tuple[ViewSpec, ...]:
        """The views a model built with ``options`` consumes, without building it.

        Raises:
            ConfigError: as :meth:`options`, or an option value that names no valid view.
        """
        return tuple(cls.input_spec_from(cls.options(options)))

    @classmethod
    @abstractmethod
    def input_spec_from(cls, options: dict[str, Any]) -> tuple[ViewSpec, ...]:
        """The input spec from validated ``options`` (every option that decides a view present)."""

    @abstractmethod
    def forward(self, views: dict[str, torch.Tensor]) -> Output:
        """``views``: view name -> ``(B, ...)`` tensors -> logits ``(B, K)`` or a dict with ``"logits"``."""

    def loss(self, output: Output, target: torch.Tensor) -> torch.Tensor:
        """Training loss of ``output`` against ``target (B,)`` class indices: cross-entropy on the
        logits (computed in float32), unless the model says otherwise."""
        return F.cross_entropy(logits_of(output).float(), target)

    @abstractmethod
    def classifier_keys(self) -> list[str]:
        """State-dict keys whose first dimension is the class (the heads' weights and biases)."""


@functools.cache
def _options_schema(cls: type[MERModel]) -> type[BaseModel]:
    """A pydantic model of ``cls.__init__``'s keyword options (``num_classes`` excluded)."""
    hints = typing.get_type_hints(cls.__init__)
    fields: dict[str, Any] = {}
    for name, parameter in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if name == "num_classes" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            raise TypeError(f"{cls.__name__}: option {name!r} needs a default")
        fields[name] = (hints.get(name, Any), parameter.default)
    return create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=()),
                        **fields)


def _describe(error: ValidationError, schema: type[BaseModel], options: dict[str, Any]) -> str:
    """One phrase per option at fault (a union's several failed branches become one)."""
    phrases: dict[str, str] = {}
    for problem in error.errors():
        option = str(problem["loc"][0]) if problem["loc"] else "?"
        if option in phrases:
            continue
        if problem["type"] == "extra_forbidden":
            phrases[option] = f"no option {option!r} (options: {', '.join(schema.model_fields)})"
            continue
        same = [p for p in error.errors() if p["loc"] and str(p["loc"][0]) == option]
        if len(same) > 1 or len(problem["loc"]) > 1:
            expected = _type_name(schema.model_fields[option].annotation)
            phrases[option] = f"option {option!r}: expected {expected}, got {options.get(option)!r}"
        else:
            phrases[option] = f"option {option!r}: {problem['msg']}, got {options.get(option)!r}"
    return "; ".join(phrases.values())


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    return text.replace("typing.", "").replace("collections.abc.", "")
