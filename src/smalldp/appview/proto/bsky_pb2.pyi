import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatNotificationInclude(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHAT_NOTIFICATION_INCLUDE_UNSPECIFIED: _ClassVar[ChatNotificationInclude]
    CHAT_NOTIFICATION_INCLUDE_ALL: _ClassVar[ChatNotificationInclude]
    CHAT_NOTIFICATION_INCLUDE_ACCEPTED: _ClassVar[ChatNotificationInclude]

class NotificationInclude(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOTIFICATION_INCLUDE_UNSPECIFIED: _ClassVar[NotificationInclude]
    NOTIFICATION_INCLUDE_ALL: _ClassVar[NotificationInclude]
    NOTIFICATION_INCLUDE_FOLLOWS: _ClassVar[NotificationInclude]

class FeedType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEED_TYPE_UNSPECIFIED: _ClassVar[FeedType]
    FEED_TYPE_POSTS_AND_AUTHOR_THREADS: _ClassVar[FeedType]
    FEED_TYPE_POSTS_NO_REPLIES: _ClassVar[FeedType]
    FEED_TYPE_POSTS_WITH_MEDIA: _ClassVar[FeedType]
    FEED_TYPE_POSTS_WITH_VIDEO: _ClassVar[FeedType]

class SitemapPageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SITEMAP_PAGE_TYPE_UNSPECIFIED: _ClassVar[SitemapPageType]
    SITEMAP_PAGE_TYPE_USER: _ClassVar[SitemapPageType]
CHAT_NOTIFICATION_INCLUDE_UNSPECIFIED: ChatNotificationInclude
CHAT_NOTIFICATION_INCLUDE_ALL: ChatNotificationInclude
CHAT_NOTIFICATION_INCLUDE_ACCEPTED: ChatNotificationInclude
NOTIFICATION_INCLUDE_UNSPECIFIED: NotificationInclude
NOTIFICATION_INCLUDE_ALL: NotificationInclude
NOTIFICATION_INCLUDE_FOLLOWS: NotificationInclude
FEED_TYPE_UNSPECIFIED: FeedType
FEED_TYPE_POSTS_AND_AUTHOR_THREADS: FeedType
FEED_TYPE_POSTS_NO_REPLIES: FeedType
FEED_TYPE_POSTS_WITH_MEDIA: FeedType
FEED_TYPE_POSTS_WITH_VIDEO: FeedType
SITEMAP_PAGE_TYPE_UNSPECIFIED: SitemapPageType
SITEMAP_PAGE_TYPE_USER: SitemapPageType

class GetBlockRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetBlockRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("record", "cid", "indexed_at", "taken_down", "created_at", "sorted_at", "takedown_ref", "tags")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    INDEXED_AT_FIELD_NUMBER: _ClassVar[int]
    TAKEN_DOWN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SORTED_AT_FIELD_NUMBER: _ClassVar[int]
    TAKEDOWN_REF_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    cid: str
    indexed_at: _timestamp_pb2.Timestamp
    taken_down: bool
    created_at: _timestamp_pb2.Timestamp
    sorted_at: _timestamp_pb2.Timestamp
    takedown_ref: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, record: _Optional[bytes] = ..., cid: _Optional[str] = ..., indexed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., taken_down: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sorted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., takedown_ref: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFeedGeneratorRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFeedGeneratorRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetFollowRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFollowRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetLikeRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetLikeRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetListBlockRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetListBlockRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetListItemRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetListItemRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetListRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetListRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetPostRecordsRequest(_message.Message):
    __slots__ = ("uris", "process_dynamic_tags_for_view", "viewer_did")
    URIS_FIELD_NUMBER: _ClassVar[int]
    PROCESS_DYNAMIC_TAGS_FOR_VIEW_FIELD_NUMBER: _ClassVar[int]
    VIEWER_DID_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    process_dynamic_tags_for_view: str
    viewer_did: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., process_dynamic_tags_for_view: _Optional[str] = ..., viewer_did: _Optional[str] = ...) -> None: ...

class GetPostRecordsResponse(_message.Message):
    __slots__ = ("records", "meta")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    meta: _containers.RepeatedCompositeFieldContainer[PostRecordMeta]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., meta: _Optional[_Iterable[_Union[PostRecordMeta, _Mapping]]] = ...) -> None: ...

class PostRecordMeta(_message.Message):
    __slots__ = ("violates_thread_gate", "has_media", "is_reply", "violates_embedding_rules", "has_post_gate", "has_thread_gate", "has_video")
    VIOLATES_THREAD_GATE_FIELD_NUMBER: _ClassVar[int]
    HAS_MEDIA_FIELD_NUMBER: _ClassVar[int]
    IS_REPLY_FIELD_NUMBER: _ClassVar[int]
    VIOLATES_EMBEDDING_RULES_FIELD_NUMBER: _ClassVar[int]
    HAS_POST_GATE_FIELD_NUMBER: _ClassVar[int]
    HAS_THREAD_GATE_FIELD_NUMBER: _ClassVar[int]
    HAS_VIDEO_FIELD_NUMBER: _ClassVar[int]
    violates_thread_gate: bool
    has_media: bool
    is_reply: bool
    violates_embedding_rules: bool
    has_post_gate: bool
    has_thread_gate: bool
    has_video: bool
    def __init__(self, violates_thread_gate: _Optional[bool] = ..., has_media: _Optional[bool] = ..., is_reply: _Optional[bool] = ..., violates_embedding_rules: _Optional[bool] = ..., has_post_gate: _Optional[bool] = ..., has_thread_gate: _Optional[bool] = ..., has_video: _Optional[bool] = ...) -> None: ...

class GetProfileRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetProfileRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetActorChatDeclarationRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetActorChatDeclarationRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetNotificationDeclarationRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetNotificationDeclarationRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetGermDeclarationRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetGermDeclarationRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetStatusRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStatusRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetRepostRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRepostRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetThreadGateRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetThreadGateRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetPostgateRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPostgateRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetLabelerRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetLabelerRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetStarterPackRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStarterPackRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetActorFollowsActorsRequest(_message.Message):
    __slots__ = ("actor_did", "target_dids")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    TARGET_DIDS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    target_dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_did: _Optional[str] = ..., target_dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetActorFollowsActorsResponse(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFollowersRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetFollowersResponse(_message.Message):
    __slots__ = ("followers", "cursor")
    FOLLOWERS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    followers: _containers.RepeatedCompositeFieldContainer[FollowInfo]
    cursor: str
    def __init__(self, followers: _Optional[_Iterable[_Union[FollowInfo, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class FollowInfo(_message.Message):
    __slots__ = ("uri", "actor_did", "subject_did")
    URI_FIELD_NUMBER: _ClassVar[int]
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DID_FIELD_NUMBER: _ClassVar[int]
    uri: str
    actor_did: str
    subject_did: str
    def __init__(self, uri: _Optional[str] = ..., actor_did: _Optional[str] = ..., subject_did: _Optional[str] = ...) -> None: ...

class GetFollowsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetFollowsResponse(_message.Message):
    __slots__ = ("follows", "cursor")
    FOLLOWS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    follows: _containers.RepeatedCompositeFieldContainer[FollowInfo]
    cursor: str
    def __init__(self, follows: _Optional[_Iterable[_Union[FollowInfo, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetVerificationRecordsRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetVerificationRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetVerificationsIssuedRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetVerificationsIssuedResponse(_message.Message):
    __slots__ = ("verifications", "cursor")
    VERIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    verifications: _containers.RepeatedCompositeFieldContainer[VerificationIssued]
    cursor: str
    def __init__(self, verifications: _Optional[_Iterable[_Union[VerificationIssued, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class VerificationIssued(_message.Message):
    __slots__ = ("actor_did", "rkey", "subject_did", "created_at", "indexed_at", "sorted_at")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    RKEY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    INDEXED_AT_FIELD_NUMBER: _ClassVar[int]
    SORTED_AT_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    rkey: str
    subject_did: str
    created_at: _timestamp_pb2.Timestamp
    indexed_at: _timestamp_pb2.Timestamp
    sorted_at: _timestamp_pb2.Timestamp
    def __init__(self, actor_did: _Optional[str] = ..., rkey: _Optional[str] = ..., subject_did: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., indexed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sorted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetVerificationsReceivedRequest(_message.Message):
    __slots__ = ("subject_did", "limit", "cursor")
    SUBJECT_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    subject_did: str
    limit: int
    cursor: str
    def __init__(self, subject_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetVerificationsReceivedResponse(_message.Message):
    __slots__ = ("verifications", "cursor")
    VERIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    verifications: _containers.RepeatedCompositeFieldContainer[VerificationReceived]
    cursor: str
    def __init__(self, verifications: _Optional[_Iterable[_Union[VerificationReceived, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class VerificationReceived(_message.Message):
    __slots__ = ("actor_did", "rkey", "subject_did", "created_at", "indexed_at", "sorted_at")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    RKEY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    INDEXED_AT_FIELD_NUMBER: _ClassVar[int]
    SORTED_AT_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    rkey: str
    subject_did: str
    created_at: _timestamp_pb2.Timestamp
    indexed_at: _timestamp_pb2.Timestamp
    sorted_at: _timestamp_pb2.Timestamp
    def __init__(self, actor_did: _Optional[str] = ..., rkey: _Optional[str] = ..., subject_did: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., indexed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sorted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetLikesBySubjectRequest(_message.Message):
    __slots__ = ("subject", "limit", "cursor")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    subject: RecordRef
    limit: int
    cursor: str
    def __init__(self, subject: _Optional[_Union[RecordRef, _Mapping]] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class RecordRef(_message.Message):
    __slots__ = ("uri", "cid")
    URI_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    uri: str
    cid: str
    def __init__(self, uri: _Optional[str] = ..., cid: _Optional[str] = ...) -> None: ...

class GetLikesBySubjectResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetLikesBySubjectSortedRequest(_message.Message):
    __slots__ = ("subject", "limit", "cursor")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    subject: RecordRef
    limit: int
    cursor: str
    def __init__(self, subject: _Optional[_Union[RecordRef, _Mapping]] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetLikesBySubjectSortedResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetLikesByActorAndSubjectsRequest(_message.Message):
    __slots__ = ("actor_did", "refs")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    refs: _containers.RepeatedCompositeFieldContainer[RecordRef]
    def __init__(self, actor_did: _Optional[str] = ..., refs: _Optional[_Iterable[_Union[RecordRef, _Mapping]]] = ...) -> None: ...

class GetLikesByActorAndSubjectsResponse(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetActorLikesRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActorLikesResponse(_message.Message):
    __slots__ = ("likes", "cursor")
    LIKES_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    likes: _containers.RepeatedCompositeFieldContainer[LikeInfo]
    cursor: str
    def __init__(self, likes: _Optional[_Iterable[_Union[LikeInfo, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class LikeInfo(_message.Message):
    __slots__ = ("uri", "subject")
    URI_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    uri: str
    subject: str
    def __init__(self, uri: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class GetRepostsBySubjectRequest(_message.Message):
    __slots__ = ("subject", "limit", "cursor")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    subject: RecordRef
    limit: int
    cursor: str
    def __init__(self, subject: _Optional[_Union[RecordRef, _Mapping]] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetRepostsBySubjectResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetRepostsByActorAndSubjectsRequest(_message.Message):
    __slots__ = ("actor_did", "refs")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    refs: _containers.RepeatedCompositeFieldContainer[RecordRef]
    def __init__(self, actor_did: _Optional[str] = ..., refs: _Optional[_Iterable[_Union[RecordRef, _Mapping]]] = ...) -> None: ...

class GetRepostsByActorAndSubjectsResponse(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetActorRepostsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActorRepostsResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetQuotesBySubjectSortedRequest(_message.Message):
    __slots__ = ("subject", "limit", "cursor")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    subject: RecordRef
    limit: int
    cursor: str
    def __init__(self, subject: _Optional[_Union[RecordRef, _Mapping]] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetQuotesBySubjectSortedResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetInteractionCountsRequest(_message.Message):
    __slots__ = ("refs", "skip_cache_for_dids")
    REFS_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FOR_DIDS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedCompositeFieldContainer[RecordRef]
    skip_cache_for_dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, refs: _Optional[_Iterable[_Union[RecordRef, _Mapping]]] = ..., skip_cache_for_dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetInteractionCountsResponse(_message.Message):
    __slots__ = ("likes", "reposts", "replies", "quotes", "bookmarks")
    LIKES_FIELD_NUMBER: _ClassVar[int]
    REPOSTS_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    QUOTES_FIELD_NUMBER: _ClassVar[int]
    BOOKMARKS_FIELD_NUMBER: _ClassVar[int]
    likes: _containers.RepeatedScalarFieldContainer[int]
    reposts: _containers.RepeatedScalarFieldContainer[int]
    replies: _containers.RepeatedScalarFieldContainer[int]
    quotes: _containers.RepeatedScalarFieldContainer[int]
    bookmarks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, likes: _Optional[_Iterable[int]] = ..., reposts: _Optional[_Iterable[int]] = ..., replies: _Optional[_Iterable[int]] = ..., quotes: _Optional[_Iterable[int]] = ..., bookmarks: _Optional[_Iterable[int]] = ...) -> None: ...

class GetCountsForUsersRequest(_message.Message):
    __slots__ = ("dids",)
    DIDS_FIELD_NUMBER: _ClassVar[int]
    dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCountsForUsersResponse(_message.Message):
    __slots__ = ("posts", "reposts", "following", "followers", "lists", "feeds", "starter_packs", "drafts")
    POSTS_FIELD_NUMBER: _ClassVar[int]
    REPOSTS_FIELD_NUMBER: _ClassVar[int]
    FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    FOLLOWERS_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    FEEDS_FIELD_NUMBER: _ClassVar[int]
    STARTER_PACKS_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    posts: _containers.RepeatedScalarFieldContainer[int]
    reposts: _containers.RepeatedScalarFieldContainer[int]
    following: _containers.RepeatedScalarFieldContainer[int]
    followers: _containers.RepeatedScalarFieldContainer[int]
    lists: _containers.RepeatedScalarFieldContainer[int]
    feeds: _containers.RepeatedScalarFieldContainer[int]
    starter_packs: _containers.RepeatedScalarFieldContainer[int]
    drafts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, posts: _Optional[_Iterable[int]] = ..., reposts: _Optional[_Iterable[int]] = ..., following: _Optional[_Iterable[int]] = ..., followers: _Optional[_Iterable[int]] = ..., lists: _Optional[_Iterable[int]] = ..., feeds: _Optional[_Iterable[int]] = ..., starter_packs: _Optional[_Iterable[int]] = ..., drafts: _Optional[_Iterable[int]] = ...) -> None: ...

class GetStarterPackCountsRequest(_message.Message):
    __slots__ = ("refs",)
    REFS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedCompositeFieldContainer[RecordRef]
    def __init__(self, refs: _Optional[_Iterable[_Union[RecordRef, _Mapping]]] = ...) -> None: ...

class GetStarterPackCountsResponse(_message.Message):
    __slots__ = ("joined_week", "joined_all_time")
    JOINED_WEEK_FIELD_NUMBER: _ClassVar[int]
    JOINED_ALL_TIME_FIELD_NUMBER: _ClassVar[int]
    joined_week: _containers.RepeatedScalarFieldContainer[int]
    joined_all_time: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, joined_week: _Optional[_Iterable[int]] = ..., joined_all_time: _Optional[_Iterable[int]] = ...) -> None: ...

class GetListCountsRequest(_message.Message):
    __slots__ = ("refs",)
    REFS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedCompositeFieldContainer[RecordRef]
    def __init__(self, refs: _Optional[_Iterable[_Union[RecordRef, _Mapping]]] = ...) -> None: ...

class GetListCountsResponse(_message.Message):
    __slots__ = ("list_items",)
    LIST_ITEMS_FIELD_NUMBER: _ClassVar[int]
    list_items: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, list_items: _Optional[_Iterable[int]] = ...) -> None: ...

class GetNewUserCountForRangeRequest(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetNewUserCountForRangeResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class GetActorsRequest(_message.Message):
    __slots__ = ("dids", "skip_cache_for_dids", "return_age_assurance_for_dids")
    DIDS_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FOR_DIDS_FIELD_NUMBER: _ClassVar[int]
    RETURN_AGE_ASSURANCE_FOR_DIDS_FIELD_NUMBER: _ClassVar[int]
    dids: _containers.RepeatedScalarFieldContainer[str]
    skip_cache_for_dids: _containers.RepeatedScalarFieldContainer[str]
    return_age_assurance_for_dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dids: _Optional[_Iterable[str]] = ..., skip_cache_for_dids: _Optional[_Iterable[str]] = ..., return_age_assurance_for_dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetActorsResponse(_message.Message):
    __slots__ = ("actors",)
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    actors: _containers.RepeatedCompositeFieldContainer[ActorInfo]
    def __init__(self, actors: _Optional[_Iterable[_Union[ActorInfo, _Mapping]]] = ...) -> None: ...

class ActorInfo(_message.Message):
    __slots__ = ("exists", "handle", "profile", "taken_down", "takedown_ref", "tombstoned_at", "labeler", "allow_incoming_chats_from", "upstream_status", "created_at", "priority_notifications", "pagerank", "trusted_verifier", "verified_by", "tags", "profile_tags", "status_record", "allow_activity_subscriptions_from", "age_assurance_status", "germ_record")
    class VerifiedByEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: VerificationMeta
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[VerificationMeta, _Mapping]] = ...) -> None: ...
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    TAKEN_DOWN_FIELD_NUMBER: _ClassVar[int]
    TAKEDOWN_REF_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONED_AT_FIELD_NUMBER: _ClassVar[int]
    LABELER_FIELD_NUMBER: _ClassVar[int]
    ALLOW_INCOMING_CHATS_FROM_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    PAGERANK_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_VERIFIER_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_BY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_TAGS_FIELD_NUMBER: _ClassVar[int]
    STATUS_RECORD_FIELD_NUMBER: _ClassVar[int]
    ALLOW_ACTIVITY_SUBSCRIPTIONS_FROM_FIELD_NUMBER: _ClassVar[int]
    AGE_ASSURANCE_STATUS_FIELD_NUMBER: _ClassVar[int]
    GERM_RECORD_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    handle: str
    profile: Record
    taken_down: bool
    takedown_ref: str
    tombstoned_at: _timestamp_pb2.Timestamp
    labeler: bool
    allow_incoming_chats_from: str
    upstream_status: str
    created_at: _timestamp_pb2.Timestamp
    priority_notifications: bool
    pagerank: float
    trusted_verifier: bool
    verified_by: _containers.MessageMap[str, VerificationMeta]
    tags: _containers.RepeatedScalarFieldContainer[str]
    profile_tags: _containers.RepeatedScalarFieldContainer[str]
    status_record: Record
    allow_activity_subscriptions_from: str
    age_assurance_status: AgeAssuranceStatus
    germ_record: Record
    def __init__(self, exists: _Optional[bool] = ..., handle: _Optional[str] = ..., profile: _Optional[_Union[Record, _Mapping]] = ..., taken_down: _Optional[bool] = ..., takedown_ref: _Optional[str] = ..., tombstoned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labeler: _Optional[bool] = ..., allow_incoming_chats_from: _Optional[str] = ..., upstream_status: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority_notifications: _Optional[bool] = ..., pagerank: _Optional[float] = ..., trusted_verifier: _Optional[bool] = ..., verified_by: _Optional[_Mapping[str, VerificationMeta]] = ..., tags: _Optional[_Iterable[str]] = ..., profile_tags: _Optional[_Iterable[str]] = ..., status_record: _Optional[_Union[Record, _Mapping]] = ..., allow_activity_subscriptions_from: _Optional[str] = ..., age_assurance_status: _Optional[_Union[AgeAssuranceStatus, _Mapping]] = ..., germ_record: _Optional[_Union[Record, _Mapping]] = ...) -> None: ...

class VerificationMeta(_message.Message):
    __slots__ = ("rkey", "handle", "display_name", "sorted_at")
    RKEY_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SORTED_AT_FIELD_NUMBER: _ClassVar[int]
    rkey: str
    handle: str
    display_name: str
    sorted_at: _timestamp_pb2.Timestamp
    def __init__(self, rkey: _Optional[str] = ..., handle: _Optional[str] = ..., display_name: _Optional[str] = ..., sorted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AgeAssuranceStatus(_message.Message):
    __slots__ = ("status", "last_initiated_at", "override_applied", "access")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_INITIATED_AT_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_APPLIED_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    status: str
    last_initiated_at: _timestamp_pb2.Timestamp
    override_applied: bool
    access: str
    def __init__(self, status: _Optional[str] = ..., last_initiated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., override_applied: _Optional[bool] = ..., access: _Optional[str] = ...) -> None: ...

class GetDidsByHandlesRequest(_message.Message):
    __slots__ = ("handles", "lookup_unidirectional")
    HANDLES_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_UNIDIRECTIONAL_FIELD_NUMBER: _ClassVar[int]
    handles: _containers.RepeatedScalarFieldContainer[str]
    lookup_unidirectional: bool
    def __init__(self, handles: _Optional[_Iterable[str]] = ..., lookup_unidirectional: _Optional[bool] = ...) -> None: ...

class GetDidsByHandlesResponse(_message.Message):
    __slots__ = ("dids",)
    DIDS_FIELD_NUMBER: _ClassVar[int]
    dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRelationshipsRequest(_message.Message):
    __slots__ = ("actor_did", "target_dids")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    TARGET_DIDS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    target_dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_did: _Optional[str] = ..., target_dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRelationshipsResponse(_message.Message):
    __slots__ = ("relationships",)
    RELATIONSHIPS_FIELD_NUMBER: _ClassVar[int]
    relationships: _containers.RepeatedCompositeFieldContainer[Relationships]
    def __init__(self, relationships: _Optional[_Iterable[_Union[Relationships, _Mapping]]] = ...) -> None: ...

class Relationships(_message.Message):
    __slots__ = ("muted", "muted_by_list", "blocked_by", "blocking", "blocked_by_list", "blocking_by_list", "following", "followed_by")
    MUTED_FIELD_NUMBER: _ClassVar[int]
    MUTED_BY_LIST_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_BY_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_BY_LIST_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_BY_LIST_FIELD_NUMBER: _ClassVar[int]
    FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    FOLLOWED_BY_FIELD_NUMBER: _ClassVar[int]
    muted: bool
    muted_by_list: str
    blocked_by: str
    blocking: str
    blocked_by_list: str
    blocking_by_list: str
    following: str
    followed_by: str
    def __init__(self, muted: _Optional[bool] = ..., muted_by_list: _Optional[str] = ..., blocked_by: _Optional[str] = ..., blocking: _Optional[str] = ..., blocked_by_list: _Optional[str] = ..., blocking_by_list: _Optional[str] = ..., following: _Optional[str] = ..., followed_by: _Optional[str] = ...) -> None: ...

class GetBlockExistenceRequest(_message.Message):
    __slots__ = ("pairs",)
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[RelationshipPair]
    def __init__(self, pairs: _Optional[_Iterable[_Union[RelationshipPair, _Mapping]]] = ...) -> None: ...

class RelationshipPair(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ...) -> None: ...

class GetBlockExistenceResponse(_message.Message):
    __slots__ = ("exists", "blocks")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    exists: _containers.RepeatedScalarFieldContainer[bool]
    blocks: _containers.RepeatedCompositeFieldContainer[BlockExistence]
    def __init__(self, exists: _Optional[_Iterable[bool]] = ..., blocks: _Optional[_Iterable[_Union[BlockExistence, _Mapping]]] = ...) -> None: ...

class BlockExistence(_message.Message):
    __slots__ = ("blocked_by", "blocking", "blocked_by_list", "blocking_by_list")
    BLOCKED_BY_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_BY_LIST_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_BY_LIST_FIELD_NUMBER: _ClassVar[int]
    blocked_by: str
    blocking: str
    blocked_by_list: str
    blocking_by_list: str
    def __init__(self, blocked_by: _Optional[str] = ..., blocking: _Optional[str] = ..., blocked_by_list: _Optional[str] = ..., blocking_by_list: _Optional[str] = ...) -> None: ...

class GetActorListsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActorListsResponse(_message.Message):
    __slots__ = ("list_uris", "cursor")
    LIST_URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    list_uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, list_uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetListMembersRequest(_message.Message):
    __slots__ = ("list_uri", "limit", "cursor")
    LIST_URI_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    list_uri: str
    limit: int
    cursor: str
    def __init__(self, list_uri: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetListMembersResponse(_message.Message):
    __slots__ = ("listitems", "cursor")
    LISTITEMS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    listitems: _containers.RepeatedCompositeFieldContainer[ListItemInfo]
    cursor: str
    def __init__(self, listitems: _Optional[_Iterable[_Union[ListItemInfo, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListItemInfo(_message.Message):
    __slots__ = ("uri", "did")
    URI_FIELD_NUMBER: _ClassVar[int]
    DID_FIELD_NUMBER: _ClassVar[int]
    uri: str
    did: str
    def __init__(self, uri: _Optional[str] = ..., did: _Optional[str] = ...) -> None: ...

class GetListMembershipRequest(_message.Message):
    __slots__ = ("actor_did", "list_uris")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIST_URIS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    list_uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_did: _Optional[str] = ..., list_uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetListMembershipResponse(_message.Message):
    __slots__ = ("listitem_uris",)
    LISTITEM_URIS_FIELD_NUMBER: _ClassVar[int]
    listitem_uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, listitem_uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetListCountRequest(_message.Message):
    __slots__ = ("list_uri",)
    LIST_URI_FIELD_NUMBER: _ClassVar[int]
    list_uri: str
    def __init__(self, list_uri: _Optional[str] = ...) -> None: ...

class GetListCountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class GetActorMutesActorRequest(_message.Message):
    __slots__ = ("actor_did", "target_did")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    TARGET_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    target_did: str
    def __init__(self, actor_did: _Optional[str] = ..., target_did: _Optional[str] = ...) -> None: ...

class GetActorMutesActorResponse(_message.Message):
    __slots__ = ("muted",)
    MUTED_FIELD_NUMBER: _ClassVar[int]
    muted: bool
    def __init__(self, muted: _Optional[bool] = ...) -> None: ...

class GetMutesRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetMutesResponse(_message.Message):
    __slots__ = ("dids", "cursor")
    DIDS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    dids: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, dids: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActorMutesActorViaListRequest(_message.Message):
    __slots__ = ("actor_did", "target_did")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    TARGET_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    target_did: str
    def __init__(self, actor_did: _Optional[str] = ..., target_did: _Optional[str] = ...) -> None: ...

class GetActorMutesActorViaListResponse(_message.Message):
    __slots__ = ("list_uri",)
    LIST_URI_FIELD_NUMBER: _ClassVar[int]
    list_uri: str
    def __init__(self, list_uri: _Optional[str] = ...) -> None: ...

class GetMutelistSubscriptionRequest(_message.Message):
    __slots__ = ("actor_did", "list_uri")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIST_URI_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    list_uri: str
    def __init__(self, actor_did: _Optional[str] = ..., list_uri: _Optional[str] = ...) -> None: ...

class GetMutelistSubscriptionResponse(_message.Message):
    __slots__ = ("subscribed",)
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    subscribed: bool
    def __init__(self, subscribed: _Optional[bool] = ...) -> None: ...

class GetMutelistSubscriptionsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetMutelistSubscriptionsResponse(_message.Message):
    __slots__ = ("list_uris", "cursor")
    LIST_URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    list_uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, list_uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetThreadMutesOnSubjectsRequest(_message.Message):
    __slots__ = ("actor_did", "thread_roots")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ROOTS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    thread_roots: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_did: _Optional[str] = ..., thread_roots: _Optional[_Iterable[str]] = ...) -> None: ...

class GetThreadMutesOnSubjectsResponse(_message.Message):
    __slots__ = ("muted",)
    MUTED_FIELD_NUMBER: _ClassVar[int]
    muted: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, muted: _Optional[_Iterable[bool]] = ...) -> None: ...

class GetBidirectionalBlockRequest(_message.Message):
    __slots__ = ("actor_did", "target_did")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    TARGET_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    target_did: str
    def __init__(self, actor_did: _Optional[str] = ..., target_did: _Optional[str] = ...) -> None: ...

class GetBidirectionalBlockResponse(_message.Message):
    __slots__ = ("block_uri",)
    BLOCK_URI_FIELD_NUMBER: _ClassVar[int]
    block_uri: str
    def __init__(self, block_uri: _Optional[str] = ...) -> None: ...

class GetBlocksRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetBlocksResponse(_message.Message):
    __slots__ = ("block_uris", "cursor")
    BLOCK_URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    block_uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, block_uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetBidirectionalBlockViaListRequest(_message.Message):
    __slots__ = ("actor_did", "target_did")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    TARGET_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    target_did: str
    def __init__(self, actor_did: _Optional[str] = ..., target_did: _Optional[str] = ...) -> None: ...

class GetBidirectionalBlockViaListResponse(_message.Message):
    __slots__ = ("list_uri",)
    LIST_URI_FIELD_NUMBER: _ClassVar[int]
    list_uri: str
    def __init__(self, list_uri: _Optional[str] = ...) -> None: ...

class GetBlocklistSubscriptionRequest(_message.Message):
    __slots__ = ("actor_did", "list_uri")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIST_URI_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    list_uri: str
    def __init__(self, actor_did: _Optional[str] = ..., list_uri: _Optional[str] = ...) -> None: ...

class GetBlocklistSubscriptionResponse(_message.Message):
    __slots__ = ("listblock_uri",)
    LISTBLOCK_URI_FIELD_NUMBER: _ClassVar[int]
    listblock_uri: str
    def __init__(self, listblock_uri: _Optional[str] = ...) -> None: ...

class GetBlocklistSubscriptionsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetBlocklistSubscriptionsResponse(_message.Message):
    __slots__ = ("list_uris", "cursor")
    LIST_URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    list_uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, list_uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetNotificationPreferencesRequest(_message.Message):
    __slots__ = ("dids",)
    DIDS_FIELD_NUMBER: _ClassVar[int]
    dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetNotificationPreferencesResponse(_message.Message):
    __slots__ = ("preferences",)
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    preferences: _containers.RepeatedCompositeFieldContainer[NotificationPreferences]
    def __init__(self, preferences: _Optional[_Iterable[_Union[NotificationPreferences, _Mapping]]] = ...) -> None: ...

class NotificationPreferences(_message.Message):
    __slots__ = ("entry", "chat", "follow", "like", "like_via_repost", "mention", "quote", "reply", "repost", "repost_via_repost", "starterpack_joined", "subscribed_post", "unverified", "verified")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    LIKE_FIELD_NUMBER: _ClassVar[int]
    LIKE_VIA_REPOST_FIELD_NUMBER: _ClassVar[int]
    MENTION_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    REPOST_FIELD_NUMBER: _ClassVar[int]
    REPOST_VIA_REPOST_FIELD_NUMBER: _ClassVar[int]
    STARTERPACK_JOINED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_POST_FIELD_NUMBER: _ClassVar[int]
    UNVERIFIED_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    entry: bytes
    chat: ChatNotificationPreference
    follow: FilterableNotificationPreference
    like: FilterableNotificationPreference
    like_via_repost: FilterableNotificationPreference
    mention: FilterableNotificationPreference
    quote: FilterableNotificationPreference
    reply: FilterableNotificationPreference
    repost: FilterableNotificationPreference
    repost_via_repost: FilterableNotificationPreference
    starterpack_joined: NotificationPreference
    subscribed_post: NotificationPreference
    unverified: NotificationPreference
    verified: NotificationPreference
    def __init__(self, entry: _Optional[bytes] = ..., chat: _Optional[_Union[ChatNotificationPreference, _Mapping]] = ..., follow: _Optional[_Union[FilterableNotificationPreference, _Mapping]] = ..., like: _Optional[_Union[FilterableNotificationPreference, _Mapping]] = ..., like_via_repost: _Optional[_Union[FilterableNotificationPreference, _Mapping]] = ..., mention: _Optional[_Union[FilterableNotificationPreference, _Mapping]] = ..., quote: _Optional[_Union[FilterableNotificationPreference, _Mapping]] = ..., reply: _Optional[_Union[FilterableNotificationPreference, _Mapping]] = ..., repost: _Optional[_Union[FilterableNotificationPreference, _Mapping]] = ..., repost_via_repost: _Optional[_Union[FilterableNotificationPreference, _Mapping]] = ..., starterpack_joined: _Optional[_Union[NotificationPreference, _Mapping]] = ..., subscribed_post: _Optional[_Union[NotificationPreference, _Mapping]] = ..., unverified: _Optional[_Union[NotificationPreference, _Mapping]] = ..., verified: _Optional[_Union[NotificationPreference, _Mapping]] = ...) -> None: ...

class ChatNotificationPreference(_message.Message):
    __slots__ = ("include", "push")
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    include: ChatNotificationInclude
    push: NotificationChannelPush
    def __init__(self, include: _Optional[_Union[ChatNotificationInclude, str]] = ..., push: _Optional[_Union[NotificationChannelPush, _Mapping]] = ...) -> None: ...

class NotificationChannelPush(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...

class FilterableNotificationPreference(_message.Message):
    __slots__ = ("include", "list", "push")
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    include: NotificationInclude
    list: NotificationChannelList
    push: NotificationChannelPush
    def __init__(self, include: _Optional[_Union[NotificationInclude, str]] = ..., list: _Optional[_Union[NotificationChannelList, _Mapping]] = ..., push: _Optional[_Union[NotificationChannelPush, _Mapping]] = ...) -> None: ...

class NotificationChannelList(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...

class NotificationPreference(_message.Message):
    __slots__ = ("list", "push")
    LIST_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    list: NotificationChannelList
    push: NotificationChannelPush
    def __init__(self, list: _Optional[_Union[NotificationChannelList, _Mapping]] = ..., push: _Optional[_Union[NotificationChannelPush, _Mapping]] = ...) -> None: ...

class GetNotificationsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor", "priority")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    priority: bool
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., priority: _Optional[bool] = ...) -> None: ...

class GetNotificationsResponse(_message.Message):
    __slots__ = ("notifications", "cursor")
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    notifications: _containers.RepeatedCompositeFieldContainer[Notification]
    cursor: str
    def __init__(self, notifications: _Optional[_Iterable[_Union[Notification, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class Notification(_message.Message):
    __slots__ = ("recipient_did", "uri", "reason", "reason_subject", "timestamp", "priority")
    RECIPIENT_DID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    recipient_did: str
    uri: str
    reason: str
    reason_subject: str
    timestamp: _timestamp_pb2.Timestamp
    priority: bool
    def __init__(self, recipient_did: _Optional[str] = ..., uri: _Optional[str] = ..., reason: _Optional[str] = ..., reason_subject: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[bool] = ...) -> None: ...

class GetNotificationSeenRequest(_message.Message):
    __slots__ = ("actor_did", "priority")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    priority: bool
    def __init__(self, actor_did: _Optional[str] = ..., priority: _Optional[bool] = ...) -> None: ...

class GetNotificationSeenResponse(_message.Message):
    __slots__ = ("timestamp",)
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetUnreadNotificationCountRequest(_message.Message):
    __slots__ = ("actor_did", "priority")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    priority: bool
    def __init__(self, actor_did: _Optional[str] = ..., priority: _Optional[bool] = ...) -> None: ...

class GetUnreadNotificationCountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class GetActivitySubscriptionDidsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActivitySubscriptionDidsResponse(_message.Message):
    __slots__ = ("dids", "cursor")
    DIDS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    dids: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, dids: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActivitySubscriptionsByActorAndSubjectsRequest(_message.Message):
    __slots__ = ("actor_did", "subject_dids")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DIDS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    subject_dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_did: _Optional[str] = ..., subject_dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetActivitySubscriptionsByActorAndSubjectsResponse(_message.Message):
    __slots__ = ("subscriptions",)
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[ActivitySubscription]
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[ActivitySubscription, _Mapping]]] = ...) -> None: ...

class ActivitySubscription(_message.Message):
    __slots__ = ("actor_did", "namespace", "key", "post", "reply", "subject_did", "indexed_at")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    POST_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DID_FIELD_NUMBER: _ClassVar[int]
    INDEXED_AT_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    namespace: str
    key: str
    post: PostActivitySubscription
    reply: ReplyActivitySubscription
    subject_did: str
    indexed_at: _timestamp_pb2.Timestamp
    def __init__(self, actor_did: _Optional[str] = ..., namespace: _Optional[str] = ..., key: _Optional[str] = ..., post: _Optional[_Union[PostActivitySubscription, _Mapping]] = ..., reply: _Optional[_Union[ReplyActivitySubscription, _Mapping]] = ..., subject_did: _Optional[str] = ..., indexed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PostActivitySubscription(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplyActivitySubscription(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateNotificationSeenRequest(_message.Message):
    __slots__ = ("actor_did", "timestamp", "priority")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    timestamp: _timestamp_pb2.Timestamp
    priority: bool
    def __init__(self, actor_did: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[bool] = ...) -> None: ...

class UpdateNotificationSeenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetActorFeedsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActorFeedsResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetSuggestedFeedsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetSuggestedFeedsResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetFeedGeneratorStatusRequest(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFeedGeneratorStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchFeedGeneratorsRequest(_message.Message):
    __slots__ = ("query", "limit")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    query: str
    limit: int
    def __init__(self, query: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class SearchFeedGeneratorsResponse(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetAuthorFeedRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor", "feed_type")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FEED_TYPE_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    feed_type: FeedType
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., feed_type: _Optional[_Union[FeedType, str]] = ...) -> None: ...

class GetAuthorFeedResponse(_message.Message):
    __slots__ = ("items", "cursor")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AuthorFeedItem]
    cursor: str
    def __init__(self, items: _Optional[_Iterable[_Union[AuthorFeedItem, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class AuthorFeedItem(_message.Message):
    __slots__ = ("uri", "cid", "repost", "repost_cid", "posts_and_author_threads", "posts_no_replies", "posts_with_media", "is_reply", "is_repost", "is_quote_post", "posts_with_video")
    URI_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    REPOST_FIELD_NUMBER: _ClassVar[int]
    REPOST_CID_FIELD_NUMBER: _ClassVar[int]
    POSTS_AND_AUTHOR_THREADS_FIELD_NUMBER: _ClassVar[int]
    POSTS_NO_REPLIES_FIELD_NUMBER: _ClassVar[int]
    POSTS_WITH_MEDIA_FIELD_NUMBER: _ClassVar[int]
    IS_REPLY_FIELD_NUMBER: _ClassVar[int]
    IS_REPOST_FIELD_NUMBER: _ClassVar[int]
    IS_QUOTE_POST_FIELD_NUMBER: _ClassVar[int]
    POSTS_WITH_VIDEO_FIELD_NUMBER: _ClassVar[int]
    uri: str
    cid: str
    repost: str
    repost_cid: str
    posts_and_author_threads: bool
    posts_no_replies: bool
    posts_with_media: bool
    is_reply: bool
    is_repost: bool
    is_quote_post: bool
    posts_with_video: bool
    def __init__(self, uri: _Optional[str] = ..., cid: _Optional[str] = ..., repost: _Optional[str] = ..., repost_cid: _Optional[str] = ..., posts_and_author_threads: _Optional[bool] = ..., posts_no_replies: _Optional[bool] = ..., posts_with_media: _Optional[bool] = ..., is_reply: _Optional[bool] = ..., is_repost: _Optional[bool] = ..., is_quote_post: _Optional[bool] = ..., posts_with_video: _Optional[bool] = ...) -> None: ...

class GetTimelineRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor", "exclude_replies", "exclude_reposts", "exclude_quotes")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_REPLIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_REPOSTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_QUOTES_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    exclude_replies: bool
    exclude_reposts: bool
    exclude_quotes: bool
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., exclude_replies: _Optional[bool] = ..., exclude_reposts: _Optional[bool] = ..., exclude_quotes: _Optional[bool] = ...) -> None: ...

class GetTimelineResponse(_message.Message):
    __slots__ = ("items", "cursor")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TimelineFeedItem]
    cursor: str
    def __init__(self, items: _Optional[_Iterable[_Union[TimelineFeedItem, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class TimelineFeedItem(_message.Message):
    __slots__ = ("uri", "cid", "repost", "repost_cid", "is_reply", "is_repost", "is_quote_post")
    URI_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    REPOST_FIELD_NUMBER: _ClassVar[int]
    REPOST_CID_FIELD_NUMBER: _ClassVar[int]
    IS_REPLY_FIELD_NUMBER: _ClassVar[int]
    IS_REPOST_FIELD_NUMBER: _ClassVar[int]
    IS_QUOTE_POST_FIELD_NUMBER: _ClassVar[int]
    uri: str
    cid: str
    repost: str
    repost_cid: str
    is_reply: bool
    is_repost: bool
    is_quote_post: bool
    def __init__(self, uri: _Optional[str] = ..., cid: _Optional[str] = ..., repost: _Optional[str] = ..., repost_cid: _Optional[str] = ..., is_reply: _Optional[bool] = ..., is_repost: _Optional[bool] = ..., is_quote_post: _Optional[bool] = ...) -> None: ...

class GetListFeedRequest(_message.Message):
    __slots__ = ("list_uri", "limit", "cursor", "exclude_replies", "exclude_reposts", "exclude_quotes")
    LIST_URI_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_REPLIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_REPOSTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_QUOTES_FIELD_NUMBER: _ClassVar[int]
    list_uri: str
    limit: int
    cursor: str
    exclude_replies: bool
    exclude_reposts: bool
    exclude_quotes: bool
    def __init__(self, list_uri: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., exclude_replies: _Optional[bool] = ..., exclude_reposts: _Optional[bool] = ..., exclude_quotes: _Optional[bool] = ...) -> None: ...

class GetListFeedResponse(_message.Message):
    __slots__ = ("items", "cursor")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TimelineFeedItem]
    cursor: str
    def __init__(self, items: _Optional[_Iterable[_Union[TimelineFeedItem, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetThreadRequest(_message.Message):
    __slots__ = ("post_uri", "above", "below")
    POST_URI_FIELD_NUMBER: _ClassVar[int]
    ABOVE_FIELD_NUMBER: _ClassVar[int]
    BELOW_FIELD_NUMBER: _ClassVar[int]
    post_uri: str
    above: int
    below: int
    def __init__(self, post_uri: _Optional[str] = ..., above: _Optional[int] = ..., below: _Optional[int] = ...) -> None: ...

class GetThreadResponse(_message.Message):
    __slots__ = ("uris",)
    URIS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uris: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchActorsRequest(_message.Message):
    __slots__ = ("term", "limit", "cursor")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    term: str
    limit: int
    cursor: str
    def __init__(self, term: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class SearchActorsResponse(_message.Message):
    __slots__ = ("dids", "cursor")
    DIDS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    dids: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, dids: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class SearchPostsRequest(_message.Message):
    __slots__ = ("term", "limit", "cursor")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    term: str
    limit: int
    cursor: str
    def __init__(self, term: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class SearchPostsResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class SearchStarterPacksRequest(_message.Message):
    __slots__ = ("term", "limit", "cursor")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    term: str
    limit: int
    cursor: str
    def __init__(self, term: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class SearchStarterPacksResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetFollowSuggestionsRequest(_message.Message):
    __slots__ = ("actor_did", "relative_to_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_TO_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    relative_to_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., relative_to_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetFollowSuggestionsResponse(_message.Message):
    __slots__ = ("dids", "cursor")
    DIDS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    dids: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, dids: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetSuggestedEntitiesRequest(_message.Message):
    __slots__ = ("limit", "cursor")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    limit: int
    cursor: str
    def __init__(self, limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetSuggestedEntitiesResponse(_message.Message):
    __slots__ = ("entities", "cursor")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[SuggestedEntity]
    cursor: str
    def __init__(self, entities: _Optional[_Iterable[_Union[SuggestedEntity, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class SuggestedEntity(_message.Message):
    __slots__ = ("tag", "subject", "subject_type", "priority")
    TAG_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    tag: str
    subject: str
    subject_type: str
    priority: int
    def __init__(self, tag: _Optional[str] = ..., subject: _Optional[str] = ..., subject_type: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class GetLabelsRequest(_message.Message):
    __slots__ = ("subjects", "issuers")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    ISSUERS_FIELD_NUMBER: _ClassVar[int]
    subjects: _containers.RepeatedScalarFieldContainer[str]
    issuers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, subjects: _Optional[_Iterable[str]] = ..., issuers: _Optional[_Iterable[str]] = ...) -> None: ...

class GetLabelsResponse(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, labels: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetAllLabelersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAllLabelersResponse(_message.Message):
    __slots__ = ("uris", "records")
    URIS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class GetActorStarterPacksRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActorStarterPacksResponse(_message.Message):
    __slots__ = ("uris", "cursor")
    URIS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetLatestRevRequest(_message.Message):
    __slots__ = ("actor_did",)
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    def __init__(self, actor_did: _Optional[str] = ...) -> None: ...

class GetLatestRevResponse(_message.Message):
    __slots__ = ("rev",)
    REV_FIELD_NUMBER: _ClassVar[int]
    rev: str
    def __init__(self, rev: _Optional[str] = ...) -> None: ...

class GetBlobTakedownRequest(_message.Message):
    __slots__ = ("did", "cid")
    DID_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    did: str
    cid: str
    def __init__(self, did: _Optional[str] = ..., cid: _Optional[str] = ...) -> None: ...

class GetBlobTakedownResponse(_message.Message):
    __slots__ = ("taken_down", "takedown_ref")
    TAKEN_DOWN_FIELD_NUMBER: _ClassVar[int]
    TAKEDOWN_REF_FIELD_NUMBER: _ClassVar[int]
    taken_down: bool
    takedown_ref: str
    def __init__(self, taken_down: _Optional[bool] = ..., takedown_ref: _Optional[str] = ...) -> None: ...

class GetRecordTakedownRequest(_message.Message):
    __slots__ = ("record_uri",)
    RECORD_URI_FIELD_NUMBER: _ClassVar[int]
    record_uri: str
    def __init__(self, record_uri: _Optional[str] = ...) -> None: ...

class GetRecordTakedownResponse(_message.Message):
    __slots__ = ("taken_down", "takedown_ref")
    TAKEN_DOWN_FIELD_NUMBER: _ClassVar[int]
    TAKEDOWN_REF_FIELD_NUMBER: _ClassVar[int]
    taken_down: bool
    takedown_ref: str
    def __init__(self, taken_down: _Optional[bool] = ..., takedown_ref: _Optional[str] = ...) -> None: ...

class GetActorTakedownRequest(_message.Message):
    __slots__ = ("did",)
    DID_FIELD_NUMBER: _ClassVar[int]
    did: str
    def __init__(self, did: _Optional[str] = ...) -> None: ...

class GetActorTakedownResponse(_message.Message):
    __slots__ = ("taken_down", "takedown_ref")
    TAKEN_DOWN_FIELD_NUMBER: _ClassVar[int]
    TAKEDOWN_REF_FIELD_NUMBER: _ClassVar[int]
    taken_down: bool
    takedown_ref: str
    def __init__(self, taken_down: _Optional[bool] = ..., takedown_ref: _Optional[str] = ...) -> None: ...

class GetBookmarksByActorAndSubjectsRequest(_message.Message):
    __slots__ = ("actor_did", "uris")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    URIS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_did: _Optional[str] = ..., uris: _Optional[_Iterable[str]] = ...) -> None: ...

class GetBookmarksByActorAndSubjectsResponse(_message.Message):
    __slots__ = ("bookmarks",)
    BOOKMARKS_FIELD_NUMBER: _ClassVar[int]
    bookmarks: _containers.RepeatedCompositeFieldContainer[Bookmark]
    def __init__(self, bookmarks: _Optional[_Iterable[_Union[Bookmark, _Mapping]]] = ...) -> None: ...

class Bookmark(_message.Message):
    __slots__ = ("ref", "subject_uri", "subject_cid", "indexed_at")
    REF_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_URI_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_CID_FIELD_NUMBER: _ClassVar[int]
    INDEXED_AT_FIELD_NUMBER: _ClassVar[int]
    ref: StashRef
    subject_uri: str
    subject_cid: str
    indexed_at: _timestamp_pb2.Timestamp
    def __init__(self, ref: _Optional[_Union[StashRef, _Mapping]] = ..., subject_uri: _Optional[str] = ..., subject_cid: _Optional[str] = ..., indexed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StashRef(_message.Message):
    __slots__ = ("actor_did", "namespace", "key")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    namespace: str
    key: str
    def __init__(self, actor_did: _Optional[str] = ..., namespace: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetActorBookmarksRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActorBookmarksResponse(_message.Message):
    __slots__ = ("bookmarks", "cursor")
    BOOKMARKS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    bookmarks: _containers.RepeatedCompositeFieldContainer[BookmarkInfo]
    cursor: str
    def __init__(self, bookmarks: _Optional[_Iterable[_Union[BookmarkInfo, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class BookmarkInfo(_message.Message):
    __slots__ = ("key", "subject")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    key: str
    subject: str
    def __init__(self, key: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class GetActorDraftsRequest(_message.Message):
    __slots__ = ("actor_did", "limit", "cursor")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    limit: int
    cursor: str
    def __init__(self, actor_did: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetActorDraftsResponse(_message.Message):
    __slots__ = ("drafts", "cursor")
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    drafts: _containers.RepeatedCompositeFieldContainer[DraftInfo]
    cursor: str
    def __init__(self, drafts: _Optional[_Iterable[_Union[DraftInfo, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class DraftInfo(_message.Message):
    __slots__ = ("key", "created_at", "updated_at", "payload")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    key: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    payload: bytes
    def __init__(self, key: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class GetIdentityByDidRequest(_message.Message):
    __slots__ = ("did",)
    DID_FIELD_NUMBER: _ClassVar[int]
    did: str
    def __init__(self, did: _Optional[str] = ...) -> None: ...

class GetIdentityByDidResponse(_message.Message):
    __slots__ = ("did", "handle", "keys", "services", "updated")
    DID_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    did: str
    handle: str
    keys: bytes
    services: bytes
    updated: _timestamp_pb2.Timestamp
    def __init__(self, did: _Optional[str] = ..., handle: _Optional[str] = ..., keys: _Optional[bytes] = ..., services: _Optional[bytes] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetIdentityByHandleRequest(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    def __init__(self, handle: _Optional[str] = ...) -> None: ...

class GetIdentityByHandleResponse(_message.Message):
    __slots__ = ("handle", "did", "keys", "services", "updated")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    DID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    handle: str
    did: str
    keys: bytes
    services: bytes
    updated: _timestamp_pb2.Timestamp
    def __init__(self, handle: _Optional[str] = ..., did: _Optional[str] = ..., keys: _Optional[bytes] = ..., services: _Optional[bytes] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetFollowsFollowingRequest(_message.Message):
    __slots__ = ("actor_did", "target_dids")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    TARGET_DIDS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    target_dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_did: _Optional[str] = ..., target_dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFollowsFollowingResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FollowsFollowing]
    def __init__(self, results: _Optional[_Iterable[_Union[FollowsFollowing, _Mapping]]] = ...) -> None: ...

class FollowsFollowing(_message.Message):
    __slots__ = ("target_did", "dids")
    TARGET_DID_FIELD_NUMBER: _ClassVar[int]
    DIDS_FIELD_NUMBER: _ClassVar[int]
    target_did: str
    dids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target_did: _Optional[str] = ..., dids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSitemapIndexRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: SitemapPageType
    def __init__(self, type: _Optional[_Union[SitemapPageType, str]] = ...) -> None: ...

class GetSitemapIndexResponse(_message.Message):
    __slots__ = ("sitemap",)
    SITEMAP_FIELD_NUMBER: _ClassVar[int]
    sitemap: bytes
    def __init__(self, sitemap: _Optional[bytes] = ...) -> None: ...

class GetSitemapPageRequest(_message.Message):
    __slots__ = ("type", "date", "bucket")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    type: SitemapPageType
    date: _timestamp_pb2.Timestamp
    bucket: int
    def __init__(self, type: _Optional[_Union[SitemapPageType, str]] = ..., date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bucket: _Optional[int] = ...) -> None: ...

class GetSitemapPageResponse(_message.Message):
    __slots__ = ("sitemap",)
    SITEMAP_FIELD_NUMBER: _ClassVar[int]
    sitemap: bytes
    def __init__(self, sitemap: _Optional[bytes] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TakedownBlobRequest(_message.Message):
    __slots__ = ("did", "cid", "ref", "seen")
    DID_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    did: str
    cid: str
    ref: str
    seen: _timestamp_pb2.Timestamp
    def __init__(self, did: _Optional[str] = ..., cid: _Optional[str] = ..., ref: _Optional[str] = ..., seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TakedownBlobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TakedownRecordRequest(_message.Message):
    __slots__ = ("record_uri", "ref", "seen")
    RECORD_URI_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    record_uri: str
    ref: str
    seen: _timestamp_pb2.Timestamp
    def __init__(self, record_uri: _Optional[str] = ..., ref: _Optional[str] = ..., seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TakedownRecordResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TakedownActorRequest(_message.Message):
    __slots__ = ("did", "ref", "seen")
    DID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    did: str
    ref: str
    seen: _timestamp_pb2.Timestamp
    def __init__(self, did: _Optional[str] = ..., ref: _Optional[str] = ..., seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TakedownActorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateActorUpstreamStatusRequest(_message.Message):
    __slots__ = ("actor_did", "active", "upstream_status")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_STATUS_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    active: bool
    upstream_status: str
    def __init__(self, actor_did: _Optional[str] = ..., active: _Optional[bool] = ..., upstream_status: _Optional[str] = ...) -> None: ...

class UpdateActorUpstreamStatusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UntakedownBlobRequest(_message.Message):
    __slots__ = ("did", "cid", "seen")
    DID_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    did: str
    cid: str
    seen: _timestamp_pb2.Timestamp
    def __init__(self, did: _Optional[str] = ..., cid: _Optional[str] = ..., seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UntakedownBlobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UntakedownRecordRequest(_message.Message):
    __slots__ = ("record_uri", "seen")
    RECORD_URI_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    record_uri: str
    seen: _timestamp_pb2.Timestamp
    def __init__(self, record_uri: _Optional[str] = ..., seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UntakedownRecordResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UntakedownActorRequest(_message.Message):
    __slots__ = ("did", "seen")
    DID_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    did: str
    seen: _timestamp_pb2.Timestamp
    def __init__(self, did: _Optional[str] = ..., seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UntakedownActorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateActorMuteRequest(_message.Message):
    __slots__ = ("actor_did", "subject_did")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    subject_did: str
    def __init__(self, actor_did: _Optional[str] = ..., subject_did: _Optional[str] = ...) -> None: ...

class CreateActorMuteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteActorMuteRequest(_message.Message):
    __slots__ = ("actor_did", "subject_did")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    subject_did: str
    def __init__(self, actor_did: _Optional[str] = ..., subject_did: _Optional[str] = ...) -> None: ...

class DeleteActorMuteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClearActorMutesRequest(_message.Message):
    __slots__ = ("actor_did",)
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    def __init__(self, actor_did: _Optional[str] = ...) -> None: ...

class ClearActorMutesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateActorMutelistSubscriptionRequest(_message.Message):
    __slots__ = ("actor_did", "subject_uri")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_URI_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    subject_uri: str
    def __init__(self, actor_did: _Optional[str] = ..., subject_uri: _Optional[str] = ...) -> None: ...

class CreateActorMutelistSubscriptionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteActorMutelistSubscriptionRequest(_message.Message):
    __slots__ = ("actor_did", "subject_uri")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_URI_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    subject_uri: str
    def __init__(self, actor_did: _Optional[str] = ..., subject_uri: _Optional[str] = ...) -> None: ...

class DeleteActorMutelistSubscriptionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClearActorMutelistSubscriptionsRequest(_message.Message):
    __slots__ = ("actor_did",)
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    def __init__(self, actor_did: _Optional[str] = ...) -> None: ...

class ClearActorMutelistSubscriptionsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateThreadMuteRequest(_message.Message):
    __slots__ = ("actor_did", "thread_root")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ROOT_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    thread_root: str
    def __init__(self, actor_did: _Optional[str] = ..., thread_root: _Optional[str] = ...) -> None: ...

class CreateThreadMuteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteThreadMuteRequest(_message.Message):
    __slots__ = ("actor_did", "thread_root")
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ROOT_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    thread_root: str
    def __init__(self, actor_did: _Optional[str] = ..., thread_root: _Optional[str] = ...) -> None: ...

class DeleteThreadMuteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClearThreadMutesRequest(_message.Message):
    __slots__ = ("actor_did",)
    ACTOR_DID_FIELD_NUMBER: _ClassVar[int]
    actor_did: str
    def __init__(self, actor_did: _Optional[str] = ...) -> None: ...

class ClearThreadMutesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
