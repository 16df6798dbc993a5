from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PopularityWindow(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POPULARITY_WINDOW_UNSPECIFIED: _ClassVar[PopularityWindow]
    POPULARITY_WINDOW_ALL_TIME: _ClassVar[PopularityWindow]
    POPULARITY_WINDOW_HOUR: _ClassVar[PopularityWindow]
    POPULARITY_WINDOW_DAY: _ClassVar[PopularityWindow]
    POPULARITY_WINDOW_WEEK: _ClassVar[PopularityWindow]
POPULARITY_WINDOW_UNSPECIFIED: PopularityWindow
POPULARITY_WINDOW_ALL_TIME: PopularityWindow
POPULARITY_WINDOW_HOUR: PopularityWindow
POPULARITY_WINDOW_DAY: PopularityWindow
POPULARITY_WINDOW_WEEK: PopularityWindow

class ItemFilter(_message.Message):
    __slots__ = ("categories_any", "categories_none", "ranges", "available")
    CATEGORIES_ANY_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_NONE_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    categories_any: _containers.RepeatedScalarFieldContainer[str]
    categories_none: _containers.RepeatedScalarFieldContainer[str]
    ranges: _containers.RepeatedCompositeFieldContainer[NumericRange]
    available: bool
    def __init__(self, categories_any: _Optional[_Iterable[str]] = ..., categories_none: _Optional[_Iterable[str]] = ..., ranges: _Optional[_Iterable[_Union[NumericRange, _Mapping]]] = ..., available: _Optional[bool] = ...) -> None: ...

class NumericRange(_message.Message):
    __slots__ = ("attribute", "min", "max")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    min: float
    max: float
    def __init__(self, attribute: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class Diversity(_message.Message):
    __slots__ = ("mmr", "max_per_category")
    MMR_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    mmr: float
    max_per_category: int
    def __init__(self, mmr: _Optional[float] = ..., max_per_category: _Optional[int] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "filter", "exclude_item_ids", "exclude_seen", "diversity", "explain")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    filter: ItemFilter
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_seen: bool
    diversity: Diversity
    explain: bool
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[ItemFilter, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_seen: _Optional[bool] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ..., explain: _Optional[bool] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("item_id", "event_type")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    event_type: str
    def __init__(self, item_id: _Optional[str] = ..., event_type: _Optional[str] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("events", "k", "filter", "exclude_item_ids", "exclude_seen", "diversity", "explain")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[SessionEvent]
    k: int
    filter: ItemFilter
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_seen: bool
    diversity: Diversity
    explain: bool
    def __init__(self, events: _Optional[_Iterable[_Union[SessionEvent, _Mapping]]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[ItemFilter, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_seen: _Optional[bool] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ..., explain: _Optional[bool] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "filter", "exclude_item_ids", "diversity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    filter: ItemFilter
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    diversity: Diversity
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[ItemFilter, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ...) -> None: ...

class PopularRequest(_message.Message):
    __slots__ = ("k", "filter", "window", "exclude_item_ids")
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    k: int
    filter: ItemFilter
    window: PopularityWindow
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, k: _Optional[int] = ..., filter: _Optional[_Union[ItemFilter, _Mapping]] = ..., window: _Optional[_Union[PopularityWindow, str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchRecommendRequest(_message.Message):
    __slots__ = ("user_ids", "k", "filter", "exclude_item_ids", "exclude_seen", "diversity", "explain")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    filter: ItemFilter
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_seen: bool
    diversity: Diversity
    explain: bool
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[ItemFilter, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_seen: _Optional[bool] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ..., explain: _Optional[bool] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("closest_history_item_id", "closest_history_title", "history_similarity", "relevance", "diversity_penalty")
    CLOSEST_HISTORY_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CLOSEST_HISTORY_TITLE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    closest_history_item_id: str
    closest_history_title: str
    history_similarity: float
    relevance: float
    diversity_penalty: float
    def __init__(self, closest_history_item_id: _Optional[str] = ..., closest_history_title: _Optional[str] = ..., history_similarity: _Optional[float] = ..., relevance: _Optional[float] = ..., diversity_penalty: _Optional[float] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "title", "categories", "explanation")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    title: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    explanation: Explanation
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., title: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "fallback", "fallback_reason", "request_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    fallback: bool
    fallback_reason: str
    request_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., fallback: _Optional[bool] = ..., fallback_reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class UserRecommendations(_message.Message):
    __slots__ = ("user_id", "items", "fallback", "fallback_reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    fallback: bool
    fallback_reason: str
    def __init__(self, user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., fallback: _Optional[bool] = ..., fallback_reason: _Optional[str] = ...) -> None: ...

class BatchRecommendResponse(_message.Message):
    __slots__ = ("results", "model_version", "request_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UserRecommendations]
    model_version: str
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[UserRecommendations, _Mapping]]] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
