#pragma once

#include <memory>

#include "core/backend.hpp"

namespace xpmem::user {

// The backend that needs no kernel module and no privilege (spec section 5).
std::unique_ptr<core::Backend> make_user_backend();

}  // namespace xpmem::user
