from os import PathLike
from typing import List, Optional, Union

LOW: int
ORCHESTRATOR: int
HIGH: int

def tag(entity_id: str, cardinality: int) -> List[str]: ...
def get_tags(entity_id: str, high_card: Union[bool, int]) -> List[str]: ...
def connect(
    address: Optional[str] = None,
    token_file: Optional[Union[str, PathLike[str]]] = None,
    cert_file: Optional[Union[str, PathLike[str]]] = None,
    config: Optional[Union[str, PathLike[str]]] = None,
) -> bool: ...
def wait_ready(timeout: float = 5.0) -> bool: ...
