#pragma once

#include <memory>

#include "core/backend.hpp"

namespace xpmem::user {

// The backend that needs no kernel module and no privilege (docs/contract.md §5,
// docs/user-backend.md).
std::unique_ptr<core::Backend> make_user_backend();

}  // namespace xpmem::user
