from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Context(_message.Message):
    __slots__ = ("device_type", "os", "locale", "country", "referrer", "app_version", "custom", "timezone")
    class CustomEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    REFERRER_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    device_type: str
    os: str
    locale: str
    country: str
    referrer: str
    app_version: str
    custom: _containers.ScalarMap[str, str]
    timezone: str
    def __init__(self, device_type: _Optional[str] = ..., os: _Optional[str] = ..., locale: _Optional[str] = ..., country: _Optional[str] = ..., referrer: _Optional[str] = ..., app_version: _Optional[str] = ..., custom: _Optional[_Mapping[str, str]] = ..., timezone: _Optional[str] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("user_id", "context", "user_hash")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USER_HASH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    context: Context
    user_hash: str
    def __init__(self, user_id: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., user_hash: _Optional[str] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("id", "kind", "title")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    title: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class TourStep(_message.Message):
    __slots__ = ("target", "title", "body", "placement")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    target: str
    title: str
    body: str
    placement: str
    def __init__(self, target: _Optional[str] = ..., title: _Optional[str] = ..., body: _Optional[str] = ..., placement: _Optional[str] = ...) -> None: ...

class TutorialChoice(_message.Message):
    __slots__ = ("id", "variant", "eligible", "surface", "tour", "resume_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    TOUR_FIELD_NUMBER: _ClassVar[int]
    RESUME_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    variant: str
    eligible: _containers.RepeatedScalarFieldContainer[str]
    surface: str
    tour: _containers.RepeatedCompositeFieldContainer[TourStep]
    resume_at: int
    def __init__(self, id: _Optional[str] = ..., variant: _Optional[str] = ..., eligible: _Optional[_Iterable[str]] = ..., surface: _Optional[str] = ..., tour: _Optional[_Iterable[_Union[TourStep, _Mapping]]] = ..., resume_at: _Optional[int] = ...) -> None: ...

class JourneyItem(_message.Message):
    __slots__ = ("id", "title", "url", "done")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    url: str
    done: bool
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., url: _Optional[str] = ..., done: _Optional[bool] = ...) -> None: ...

class SurfaceAllowed(_message.Message):
    __slots__ = ("show", "reason")
    SHOW_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    show: bool
    reason: str
    def __init__(self, show: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class DecideReply(_message.Message):
    __slots__ = ("decision_id", "step", "tutorial", "message", "step_message", "flags", "segments", "experiments", "completed_steps", "personalized", "explain", "activation_probability", "recommended_features", "catalog_version", "journey", "surfaces")
    class FlagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    class ExperimentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SurfacesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SurfaceAllowed
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SurfaceAllowed, _Mapping]] = ...) -> None: ...
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TUTORIAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_STEPS_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZED_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    SURFACES_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    step: Step
    tutorial: TutorialChoice
    message: str
    step_message: str
    flags: _containers.ScalarMap[str, bool]
    segments: _containers.RepeatedScalarFieldContainer[str]
    experiments: _containers.ScalarMap[str, str]
    completed_steps: _containers.RepeatedScalarFieldContainer[str]
    personalized: bool
    explain: _containers.RepeatedScalarFieldContainer[str]
    activation_probability: float
    recommended_features: _containers.RepeatedScalarFieldContainer[str]
    catalog_version: int
    journey: _containers.RepeatedCompositeFieldContainer[JourneyItem]
    surfaces: _containers.MessageMap[str, SurfaceAllowed]
    def __init__(self, decision_id: _Optional[str] = ..., step: _Optional[_Union[Step, _Mapping]] = ..., tutorial: _Optional[_Union[TutorialChoice, _Mapping]] = ..., message: _Optional[str] = ..., step_message: _Optional[str] = ..., flags: _Optional[_Mapping[str, bool]] = ..., segments: _Optional[_Iterable[str]] = ..., experiments: _Optional[_Mapping[str, str]] = ..., completed_steps: _Optional[_Iterable[str]] = ..., personalized: _Optional[bool] = ..., explain: _Optional[_Iterable[str]] = ..., activation_probability: _Optional[float] = ..., recommended_features: _Optional[_Iterable[str]] = ..., catalog_version: _Optional[int] = ..., journey: _Optional[_Iterable[_Union[JourneyItem, _Mapping]]] = ..., surfaces: _Optional[_Mapping[str, SurfaceAllowed]] = ...) -> None: ...

class SelectTutorialRequest(_message.Message):
    __slots__ = ("user_id", "context", "step", "feature", "user_hash")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    USER_HASH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    context: Context
    step: str
    feature: str
    user_hash: str
    def __init__(self, user_id: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., step: _Optional[str] = ..., feature: _Optional[str] = ..., user_hash: _Optional[str] = ...) -> None: ...

class SelectTutorialReply(_message.Message):
    __slots__ = ("decision_id", "tutorial", "variant", "eligible", "segments", "explain", "catalog_version")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TUTORIAL_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    tutorial: str
    variant: str
    eligible: _containers.RepeatedScalarFieldContainer[str]
    segments: _containers.RepeatedScalarFieldContainer[str]
    explain: _containers.RepeatedScalarFieldContainer[str]
    catalog_version: int
    def __init__(self, decision_id: _Optional[str] = ..., tutorial: _Optional[str] = ..., variant: _Optional[str] = ..., eligible: _Optional[_Iterable[str]] = ..., segments: _Optional[_Iterable[str]] = ..., explain: _Optional[_Iterable[str]] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "user_id", "type", "ts", "props", "context")
    class PropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    PROPS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    type: str
    ts: float
    props: _containers.ScalarMap[str, str]
    context: Context
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., type: _Optional[str] = ..., ts: _Optional[float] = ..., props: _Optional[_Mapping[str, str]] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class SendEventsRequest(_message.Message):
    __slots__ = ("events", "user_hash", "anonymous_id")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    USER_HASH_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    user_hash: str
    anonymous_id: str
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., user_hash: _Optional[str] = ..., anonymous_id: _Optional[str] = ...) -> None: ...

class SendEventsReply(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class RewardRequest(_message.Message):
    __slots__ = ("decision_id", "reward")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    reward: float
    def __init__(self, decision_id: _Optional[str] = ..., reward: _Optional[float] = ...) -> None: ...

class RewardReply(_message.Message):
    __slots__ = ("accepted", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...
